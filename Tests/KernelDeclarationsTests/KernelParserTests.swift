import XCTest
@testable import KernelDeclarations

/// The parser and Swift emitter of the CUDA kernel generator (CUDAKernelTool), on small .cu texts.
final class KernelParserTests: XCTestCase {
    func parse(_ text: String) throws -> KernelFile { try KernelParser.parse(text, file: "test.cu", family: "test") }

    func failure(_ text: String) -> DeclarationError? {
        do { _ = try parse(text); return nil } catch let e as DeclarationError { return e } catch { return nil }
    }

    func testSingleKernelsPerElementType() throws {
        let f = try parse("""
        #include "../common.cuh"
        // fill: y = v
        TVM_KERNEL(fill, (256), (scalar_t* y, i64 n, scalar_t v)) { fill_impl(y, n, v); }
        TVM_KERNEL(gather, (256, 2), (const scalar_t* table, int* err, View2 view)) { }
        """)
        XCTAssertTrue(f.perElementType)
        XCTAssertEqual(f.includes, ["../common.cuh"])
        XCTAssertEqual(f.kernels.map(\.name), ["fill", "gather"])
        XCTAssertEqual(f.kernels[0].parameters, [KernelParameter(name: "y", cType: "scalar_t*"), KernelParameter(name: "n", cType: "i64"),
                                                 KernelParameter(name: "v", cType: "scalar_t")])
        XCTAssertEqual(f.kernels[1].parameters.map(\.cType), ["const scalar_t*", "int*", "View2"])
        XCTAssertEqual(f.kernels[0].instances, [KernelInstance(name: "fill", threads: 256, minBlocks: nil, axisValues: [], line: 3)])
        XCTAssertEqual(f.kernels[1].instances[0].minBlocks, 2)
    }

    func testTemplateInstancesEvaluateNamesBoundsAndAxes() throws {
        let f = try parse("""
        //! kernel binary_dense(op: BinaryOp, mode: Int)
        #define BINARY_DENSE(op, mode, B) \\
            TVM_KERNEL_F32(binary_##op##_d##mode, B, (const float *a, float* y, i64 n)) { impl<BF_##op, mode>(a, y, n); }
        BINARY_DENSE(add, 0, (256)) BINARY_DENSE(add, 1, (128, 3))
        BINARY_DENSE(mul, 2, (64))
        """)
        XCTAssertFalse(f.perElementType)
        let k = try XCTUnwrap(f.kernels.first)
        XCTAssertTrue(k.isTemplate)
        XCTAssertEqual(k.axes, [KernelAxis(name: "op", swiftType: "BinaryOp"), KernelAxis(name: "mode", swiftType: "Int")])
        XCTAssertEqual(k.parameters.map(\.cType), ["const float*", "float*", "i64"])
        XCTAssertEqual(k.instances.map(\.name), ["binary_add_d0", "binary_add_d1", "binary_mul_d2"])
        XCTAssertEqual(k.instances.map(\.threads), [256, 128, 64])
        XCTAssertEqual(k.instances.map(\.minBlocks), [nil, 3, nil])
        XCTAssertEqual(k.instances.map(\.axisValues), [["add", "0"], ["add", "1"], ["mul", "2"]])
        XCTAssertEqual(k.instances.map(\.line), [4, 4, 5])
    }

    func testCommentsAndOrdinaryMacrosAreIgnored() throws {
        let f = try parse("""
        /* TVM_KERNEL(not_a_kernel, (256), (int n)) */
        // TVM_KERNEL(nor_this, (256), (int n))
        #define GELU_C 0.79
        TVM_KERNEL(real, (256), (int n)) { }
        """)
        XCTAssertEqual(f.kernels.map(\.name), ["real"])
    }

    func testMalformedDeclarationsFailWithTheirLine() {
        XCTAssertEqual(failure("TVM_KERNEL(k, (256), (quaternion q)) { }")?.message,
                       "kernel parameter q: no Swift packing for C type 'quaternion' (see SwiftArgument)")
        XCTAssertEqual(failure("\n\nTVM_KERNEL(k, 256, (int n)) { }")?.line, 3)
        XCTAssertNotNil(failure("TVM_KERNEL(k, (256)) { }"))
        XCTAssertNotNil(failure("TVM_KERNEL(k, (many), (int n)) { }"))
        XCTAssertNotNil(failure("TVM_KERNEL(k, (256), (int n)) { }\nTVM_KERNEL(k, (256), (int n)) { }"))
        XCTAssertNotNil(failure("TVM_KERNEL(a, (256), (int n)) { }\nTVM_KERNEL_F32(b, (256), (int n)) { }"))
        XCTAssertNotNil(failure("#define K(op) TVM_KERNEL(k_##op, (256), (int n)) { }"), "a template macro needs its //! line")
        XCTAssertNotNil(failure("//! kernel k(op: UnaryOp)\nint x;"))
        XCTAssertNotNil(failure("//! kernel k(width: Int)\n#define K(w) TVM_KERNEL(k##w, (256), (int n)) { }\nK(1)"),
                        "an axis must be a macro parameter")
        XCTAssertNotNil(failure("//! kernel k(w: Int)\n#define K(w) TVM_KERNEL(k##w, (256), (int n)) { }\nK(wide)"))
        XCTAssertNotNil(failure("//! kernel k(w: Int)\n#define K(w) TVM_KERNEL(k##w, (256), (int n)) { }\nK(1, 2)"))
        XCTAssertNotNil(failure("//! kernel k(w: Int)\n#define K(w) TVM_KERNEL(k##w, (256), (int n)) { }"), "no instances")
        XCTAssertNotNil(failure("//! kernel k w\n"))
    }

    func testEmittedSwiftHasTypedLaunchersAndInstances() throws {
        let f = try parse("""
        //! kernel unary(op: UnaryOp)
        #define UNARY(op) TVM_KERNEL(unary_##op, (256), (const scalar_t* x, scalar_t* y, i64 n, int in)) { }
        UNARY(neg) UNARY(exp)
        TVM_KERNEL(affine, (256), (const scalar_t* x, scalar_t a, u64 seed, float scale, Win w)) { }
        """)
        let swift = SwiftEmitter.emit(f, source: "TEXT \"\"\"# ##", origin: "Sources/CUDABackend/Test/test.cu")
        // The raw string's delimiter is longer than any run of # in the text.
        XCTAssertTrue(swift.contains("static let test = KernelFamily(name: \"test\", perElementType: true, source: ###\"\"\"\nTEXT \"\"\"# ##\n\"\"\"###)"))
        XCTAssertTrue(swift.contains("final class TestKernels: KernelSet {"))
        XCTAssertTrue(swift.contains("struct Unary {\n        let function: KernelFunction\n        let op: UnaryOp\n"))
        XCTAssertTrue(swift.contains("x: DevicePointer,\n                    y: DevicePointer,\n                    n: Int,\n                    `in`: Int) {"))
        XCTAssertTrue(swift.contains("$0.pointer(x); $0.pointer(y); $0.int64(n); $0.int32(`in`)"))
        XCTAssertTrue(swift.contains("$0.pointer(x); $0.scalar(a, function.dtype); $0.add(seed); $0.add(scale); $0.window(w)"))
        XCTAssertTrue(swift.contains("Unary(function: try module.function(\"unary_neg\", threads: 256), op: .neg),"))
        XCTAssertTrue(swift.contains("affine = Affine(function: try module.function(\"affine\", threads: 256))"))
    }

    func testTranslationUnitInlinesHeadersOnceWithLineDirectives() throws {
        let files = ["k/Fam/fam.cu": "#include \"../common.cuh\"\n#include \"../common.cuh\"\nbody", "k/common.cuh": "shared"]
        let text = try TranslationUnit.assemble(path: "k/Fam/fam.cu", read: { files[$0] }, display: { "S/" + $0 })
        XCTAssertEqual(text, "#line 1 \"S/k/common.cuh\"\nshared\n#line 2 \"S/k/Fam/fam.cu\"\n#line 3 \"S/k/Fam/fam.cu\"\nbody")
        XCTAssertThrowsError(try TranslationUnit.assemble(path: "k/Fam/fam.cu", read: { $0 == "k/Fam/fam.cu" ? "#include \"x.cuh\"" : nil },
                                                          display: { $0 }))
        XCTAssertEqual(TranslationUnit.normalize("/a/b/../c/./d.cuh"), "/a/c/d.cuh")
    }
}
