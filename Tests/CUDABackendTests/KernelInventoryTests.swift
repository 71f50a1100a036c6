import XCTest
import TensorCore
@testable import CUDABackend

/// The kernels the .cu files declare (their generated instance lists) cover every operation the launchers ask
/// for: checked here without a GPU, where a missing instance would otherwise stop the first launch that needs it.
final class KernelInventoryTests: XCTestCase {
    func testElementwiseKernelsCoverEveryOperation() {
        XCTAssertEqual(Set(ElementwiseKernels.unaryAxes.map { "\($0)" }), Set(UnaryOp.allCases.map { "\($0)" }))
        let fused = UnaryOp.allCases.filter { $0.derivatives != nil }.map { "\($0)" }
        for axes in [ElementwiseKernels.actTangentAxes, ElementwiseKernels.actTangentBwdAxes, ElementwiseKernels.actBwdAxes] {
            XCTAssertEqual(Set(axes.map { "\($0)" }), Set(fused))
        }
        let binaryOps: [BinaryOp] = [.add, .sub, .mul, .div, .maximum, .minimum, .greater, .greaterEqual, .equal]
        for op in binaryOps {
            XCTAssertEqual(ElementwiseKernels.binaryDenseAxes.filter { $0.op == op }.map(\.mode).sorted(), [0, 1, 2], "\(op)")
            XCTAssertEqual(ElementwiseKernels.binaryRowsAxes.filter { $0 == op }.count, 1, "\(op)")
            XCTAssertEqual(ElementwiseKernels.binaryStridedAxes.filter { $0.op == op }.map(\.indexBits).sorted(), [32, 64], "\(op)")
        }
        XCTAssertEqual(ShapingKernels.copyStridedAxes.sorted(), [32, 64])
    }

    func testReductionAndConvolutionKernelsCoverEveryKind() {
        for axes in [ReductionKernels.reduceColsAxes, ReductionKernels.reduceRowsWarpAxes, ReductionKernels.reduceRowsBlockAxes] {
            XCTAssertEqual(axes.map { "\($0)" }.sorted(), ["max", "sum"])
        }
        XCTAssertEqual(Set(ConvolutionKernels.poolAxes.map { "\($0)" }),
                       Set([PoolKind.max, .averageExcludingPadding, .averageIncludingPadding].map { "\($0)" }))
    }

    func testRowKernelsCoverTheirWidths() {
        // Rows of up to 32 * 64 values in registers for softmax and RMS norm; every head dim up to 512 for attention.
        XCTAssertEqual(SoftmaxKernels.softmaxWarpAxes.max(), 64)
        XCTAssertEqual(RMSNormKernels.rmsnormWarpAxes, SoftmaxKernels.softmaxWarpAxes)
        XCTAssertEqual(RMSNormKernels.rmsnormScaledWarpAxes, SoftmaxKernels.softmaxWarpAxes)
        for tangent in [false, true] {
            for axes in [AttentionKernels.attnFwdAxes, AttentionKernels.attnBwdRowsAxes, AttentionKernels.attnBwdColsAxes] {
                XCTAssertEqual(axes.filter { $0.tangent == tangent }.map(\.width).sorted(), [1, 2, 3, 4, 8, 16])
            }
        }
    }

    func testFlashKernelsCoverEveryConfiguration() {
        let forward = FlashAttentionKernels.flashFwdAxes.map { (tangent: $0.tangent, dim: $0.dim, precision: $0.precision) }
        let dq = FlashAttentionKernels.flashDqAxes.map { (tangent: $0.tangent, dim: $0.dim, precision: $0.precision) }
        let dkv = FlashAttentionKernels.flashDkvAxes.map { (tangent: $0.tangent, dim: $0.dim, precision: $0.precision) }
        for (name, axes) in [("forward", forward), ("dq", dq), ("dkv", dkv)] {
            for dim in [64, 72] {
                for tangent in [false, true] {
                    for precision in FlashPrecision.allCases {
                        XCTAssertTrue(axes.contains { $0.dim == dim && $0.tangent == tangent && $0.precision == precision },
                                      "\(name) \(dim) \(tangent) \(precision)")
                    }
                }
            }
        }
        XCTAssertEqual(FlashAttentionKernels.dims, [64, 72])
        // The largest: the query-side backward with the tangent (8 warps of 16 rows, 32 keys a step, four tiles each),
        // head dim 72 in float32 tiles of pitch 76 (190 KB; an H100 block may opt in to 227 KB).
        XCTAssertEqual(FlashAttentionKernels.maxSharedBytes, (128 + 32) * 4 * 76 * 4)
    }
}
