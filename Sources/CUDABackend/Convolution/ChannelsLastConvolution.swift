import TensorCore

// ChannelsLastImageBackend's convolutions through cuDNN (CuDNN.swift), in the precision of the matrix products:
// float32 FMA kernels by default, TF32 tensor cores with `allowTF32`, bfloat16 operands with `bf16Products`.
// The group norms are in GroupNorm/.
extension CUDABackend: ChannelsLastImageBackend {
    /// A line for the commands whose speed depends on it (bench vae, prepare): cuDNN was not found, so convolutions
    /// are composed. nil where cuDNN is in use or switched off on purpose. Opens cuDNN if that was not tried yet.
    /// Not printed by the library (notes before an error would break the one-line error promise).
    public var cudnnNotice: String? {
        guard useCuDNN, cudnn == nil else { return nil }
        return "note: no cuDNN (\(cudnnLoadError ?? "not found")); convolutions use the slower im2col path"
    }

    /// The cuDNN version in use ("9.10.2"), nil without it.
    public var cudnnVersion: String? { useCuDNN ? cudnn?.library.version : nil }

    func openCuDNN() -> (library: CuDNN, handle: OpaquePointer)? {
        do {
            let dnn = try CuDNN.load()
            ensureCurrent()
            var h: OpaquePointer? = nil
            try dnn.check(dnn.cudnnCreate(&h), "cudnnCreate")
            guard let h else { throw CUDAError("cuDNN: cudnnCreate returned no handle") }
            try dnn.check(dnn.cudnnSetStream(h, stream), "cudnnSetStream")
            return (dnn, h)
        } catch {
            cudnnLoadError = "\(error)"
            return nil
        }
    }

    public func convolution(_ x: Storage, weight: Storage, bias: Storage, plus residual: Storage?, _ y: Storage,
                            geometry g: ChannelsLastConvolution) -> Bool {
        guard useCuDNN, x.dtype == .float32, let oh = g.outHeight, let ow = g.outWidth else { return false }
        // cuDNN's legacy API indexes tensors with 32-bit integers.
        let largest = Swift.max(g.images * (g.height + g.kernelHeight) * (g.width + g.kernelWidth) * g.inChannels,
                                g.images * oh * ow * g.outChannels)
        guard largest < Int(Int32.max), let opened = cudnn else { return false }
        let (dnn, handle) = opened
        ensureCurrent()
        let bf16 = bf16Products
        let key = ConvolutionPlanKey(geometry: g, bf16: bf16, tf32: allowTF32 && !bf16)
        let plan: ConvolutionPlan
        if let known = convolutionPlans[key] {
            guard let known else { return false }
            plan = known
        } else {
            let made = convolutionPlan(key, dnn)
            convolutionPlans.updateValue(made, forKey: key)
            guard let made else { return false }
            plan = made
        }
        var input = x
        if let e = plan.explicitPadding {
            // The part of the padding cuDNN cannot take (it pads both sides alike): zeros around a copy.
            let (h, w, c) = (g.height + e.top + e.bottom, g.width + e.left + e.right, g.inChannels)
            input = allocate(g.images * h * w * c, .float32)
            fill(input, value: 0)
            copy(x, StridedView(strides: [g.height * g.width * c, g.width * c, c, 1]), input,
                 StridedView(offset: (e.top * w + e.left) * c, strides: [h * w * c, w * c, c, 1]),
                 shape: [g.images, g.height, g.width, c])
        }
        // bf16: operands as bfloat16 copies, the output in bfloat16 too (cuDNN's BFLOAT16 configuration), widened to
        // float32 with the bias added below.
        var output16: Storage? = nil
        let px: DevicePointer, pw: DevicePointer
        if bf16 {
            beginBF16Call()
            px = bf16Operand(input)
            pw = bf16Operand(weight)
            output16 = allocate((y.count + 1) / 2, .float32)
        } else {
            (px, pw) = (addr(input), addr(weight))
        }
        let workspace = plan.workspaceBytes > 0 ? allocate((plan.workspaceBytes + 3) / 4, .float32) : nil
        var one: Float = 1, zero: Float = 0
        let started = profiler?.begin(stream)
        let status = dnn.cudnnConvolutionForward(handle, &one, plan.x, UnsafeRawPointer(bitPattern: UInt(px)), plan.w,
                                                 UnsafeRawPointer(bitPattern: UInt(pw)), plan.convolution, plan.algorithm,
                                                 workspace.map { UnsafeMutableRawPointer(bitPattern: UInt(addr($0))) } ?? nil,
                                                 plan.workspaceBytes, &zero, plan.y,
                                                 UnsafeMutableRawPointer(bitPattern: UInt(output16.map { addr($0) } ?? addr(y))))
        if let started {
            profiler!.end(started, "cudnn conv \(g.kernelHeight)x\(g.kernelWidth)/\(g.stride) \(g.images)x\(g.height)x\(g.width)x"
                          + "\(g.inChannels)->\(g.outChannels)\(bf16 ? " bf16" : key.tf32 ? " tf32" : "")", stream)
        }
        dnn.must(status, "cudnnConvolutionForward(\(g), algorithm \(plan.algorithm))")
        if syncEveryLaunch { driver.must(driver.cuStreamSynchronize(stream), "cuStreamSynchronize after cuDNN") }
        kernels(ConvolutionKernels.self, .float32).convBias
            .launch(on: self, grid: (blocks(y.count), 1), y: addr(y), y16: addr(output16), b: addr(bias), r: addr(residual),
                    n: y.count, channels: g.outChannels)
        withExtendedLifetime((input, workspace, output16)) {}
        cudnnConvolutions += 1
        return true
    }

    /// Descriptors and an algorithm for one convolution, or nil (with `cudnnPlanFailure` saying why) where cuDNN
    /// refuses a descriptor or its heuristic has no algorithm within the workspace limit.
    func convolutionPlan(_ key: ConvolutionPlanKey, _ dnn: CuDNN) -> ConvolutionPlan? {
        let g = key.geometry, p = g.padding
        let (handle, type) = (cudnn!.handle, key.bf16 ? CuDNN.dataBFloat16 : CuDNN.dataFloat)
        let padY = Swift.min(p.top, p.bottom), padX = Swift.min(p.left, p.right)
        let explicit = EdgePadding(top: p.top - padY, bottom: p.bottom - padY, left: p.left - padX, right: p.right - padX)
        let h = g.height + explicit.top + explicit.bottom, w = g.width + explicit.left + explicit.right
        var failure: String?
        func ok(_ status: CuDNN.Status, _ what: String) -> Bool {
            if status == 0 { return true }
            failure = failure ?? "\(what): \(dnn.describe(status))"
            return false
        }
        var xd: OpaquePointer? = nil, wd: OpaquePointer? = nil, yd: OpaquePointer? = nil, cd: OpaquePointer? = nil
        // With the FMA-only math type the heuristic ranks FMA kernels; tensor-op math for bf16; TF32 allowed by default math.
        let math = key.bf16 ? CuDNN.mathTensorOp : key.tf32 ? CuDNN.mathDefault : CuDNN.mathFMA
        let perf = UnsafeMutableRawPointer.allocate(byteCount: CuDNN.perfBytes * CuDNN.forwardAlgorithmCount, alignment: 8)
        defer { perf.deallocate() }
        var returned: Int32 = 0
        guard ok(dnn.cudnnCreateTensorDescriptor(&xd), "cudnnCreateTensorDescriptor"),
              ok(dnn.cudnnSetTensor4dDescriptor(xd, CuDNN.formatNHWC, type, Int32(g.images), Int32(g.inChannels), Int32(h), Int32(w)),
                 "cudnnSetTensor4dDescriptor(x)"),
              ok(dnn.cudnnCreateFilterDescriptor(&wd), "cudnnCreateFilterDescriptor"),
              ok(dnn.cudnnSetFilter4dDescriptor(wd, type, CuDNN.formatNHWC, Int32(g.outChannels), Int32(g.inChannels),
                                                Int32(g.kernelHeight), Int32(g.kernelWidth)), "cudnnSetFilter4dDescriptor"),
              ok(dnn.cudnnCreateTensorDescriptor(&yd), "cudnnCreateTensorDescriptor"),
              ok(dnn.cudnnSetTensor4dDescriptor(yd, CuDNN.formatNHWC, type, Int32(g.images), Int32(g.outChannels),
                                                Int32(g.outHeight!), Int32(g.outWidth!)), "cudnnSetTensor4dDescriptor(y)"),
              ok(dnn.cudnnCreateConvolutionDescriptor(&cd), "cudnnCreateConvolutionDescriptor"),
              ok(dnn.cudnnSetConvolution2dDescriptor(cd, Int32(padY), Int32(padX), Int32(g.stride), Int32(g.stride), 1, 1,
                                                     CuDNN.crossCorrelation, CuDNN.dataFloat), "cudnnSetConvolution2dDescriptor"),
              ok(dnn.cudnnSetConvolutionMathType(cd, math), "cudnnSetConvolutionMathType"),
              ok(dnn.cudnnGetConvolutionForwardAlgorithm_v7(handle, xd, wd, cd, yd, Int32(CuDNN.forwardAlgorithmCount), &returned, perf),
                 "cudnnGetConvolutionForwardAlgorithm_v7") else {
            cudnnPlanFailure = "\(g): \(failure!)"
            return nil
        }
        // The heuristic's ranking, best first: the first that works within the workspace limit.
        for i in 0..<Swift.min(Int(returned), CuDNN.forwardAlgorithmCount) {
            let entry = perf + i * CuDNN.perfBytes
            let algorithm = entry.load(as: Int32.self)
            guard entry.load(fromByteOffset: CuDNN.perfStatusOffset, as: Int32.self) == 0,
                  entry.load(fromByteOffset: CuDNN.perfMemoryOffset, as: Int.self) <= CuDNN.maxWorkspaceBytes else { continue }
            // float32 without TF32 keeps the FMA math type whatever the entry says (its kernels round as float32);
            // otherwise the entry's own math type goes with its algorithm.
            let entryMath = entry.load(fromByteOffset: CuDNN.perfMathTypeOffset, as: Int32.self)
            var bytes = 0
            guard ok(dnn.cudnnSetConvolutionMathType(cd, key.bf16 || key.tf32 ? entryMath : CuDNN.mathFMA), "cudnnSetConvolutionMathType"),
                  ok(dnn.cudnnGetConvolutionForwardWorkspaceSize(handle, xd, wd, cd, yd, algorithm, &bytes),
                     "cudnnGetConvolutionForwardWorkspaceSize(algorithm \(algorithm))"),
                  bytes <= CuDNN.maxWorkspaceBytes else { continue }
            return ConvolutionPlan(x: xd!, w: wd!, y: yd!, convolution: cd!, algorithm: algorithm, workspaceBytes: bytes,
                                   explicitPadding: explicit == .uniform(0) ? nil : explicit)
        }
        cudnnPlanFailure = "\(g): " + (failure ?? "no algorithm among cuDNN's \(returned) within \(CuDNN.maxWorkspaceBytes >> 20) MiB of workspace")
        return nil
    }
}
