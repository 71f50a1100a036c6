import TensorCore

// ChannelsLastImageBackend's convolutions through cuDNN (CuDNN.swift), in the precision of the matrix products:
// float32 FMA kernels by default, TF32 tensor cores with `allowTF32`, bfloat16 operands with `bf16Products` (inputs,
// residuals and outputs may then hold bf16 values alone: BF16Operands.swift). Without cuDNN (or where it declines
// one), an im2col kernel and the linear layers' products, in bands of output pixels. Nearest-neighbour upsampling
// here too; the group norms are in GroupNorm/.
extension CUDABackend: ChannelsLastImageBackend {
    /// A line for the commands whose speed depends on it (bench vae, prepare): cuDNN was not found, so convolutions
    /// take the im2col path. nil where cuDNN is in use or switched off on purpose. Opens cuDNN if that was not tried yet.
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
        if cudnnConvolution(x, weight: weight, bias: bias, plus: residual, y, geometry: g) { return true }
        // The im2col path reads and writes float32: operands that hold only bf16 values are widened first, and such an
        // output is written in float32 and narrowed after (a slow path, for where cuDNN is missing or declines).
        writingFloat32(y) { wide in
            im2colConvolution(widened(x), weight: weight, bias: bias, plus: residual.map(widened), wide!,
                              geometry: g)
        }
        return true
    }

    public func upsampleNearest2x(_ x: Storage, _ y: Storage, images: Int, height: Int, width: Int, channels: Int) -> Bool {
        let rows = images * 2 * height
        guard rows > 0 && width > 0 && channels > 0 else { return true }
        let (xf, x16) = float32OrBF16(x), (yf, y16) = float32OrBF16(y)
        kernels(ConvolutionKernels.self, x.dtype).upsampleNearest2xNhwc
            .launch(on: self, grid: (Swift.min(rows, maxBlocks * 2), 1), x: xf, x16: x16, y: yf, y16: y16, rows: rows,
                    h: height, w: width, c: channels)
        return true
    }

    /// y = the im2col matrix of each band of output pixels times the weight (a linear layer: the bias in the product's
    /// epilogue), then the residual added. Under bf16 products the kernel writes the matrix's bf16 copy beside it.
    func im2colConvolution(_ x: Storage, weight: Storage, bias: Storage, plus residual: Storage?, _ y: Storage,
                           geometry g: ChannelsLastConvolution) {
        let (oh, ow) = (g.outHeight!, g.outWidth!)
        let k = g.kernelHeight * g.kernelWidth * g.inChannels, pixels = g.images * oh * ow
        guard pixels > 0 else { return }
        let bandPixels = Swift.max(1, Swift.min(pixels, im2colBandElements / Swift.max(k, 1)))
        let im2col = kernels(ConvolutionKernels.self, x.dtype).im2colNhwc
        for first in stride(from: 0, to: pixels, by: bandPixels) {
            let rows = Swift.min(bandPixels, pixels - first)
            let cols = allocate(rows * k, x.dtype)
            beginBF16Call()
            im2col.launch(on: self, grid: (Swift.min(rows, maxBlocks * 2), 1), x: addr(x), cols: addr(cols), cols16: bf16Twin(cols),
                          firstRow: first, rows: rows, h: g.height, w: g.width, c: g.inChannels, kh: g.kernelHeight,
                          kw: g.kernelWidth, stride: g.stride, top: g.padding.top, left: g.padding.left, oh: oh, ow: ow)
            if rows == pixels {
                linear(cols, weight, bias: bias, y, rows: rows, inFeatures: k, outFeatures: g.outChannels)
            } else {
                let band = allocate(rows * g.outChannels, x.dtype)
                linear(cols, weight, bias: bias, band, rows: rows, inFeatures: k, outFeatures: g.outChannels)
                copy(band, StridedView(strides: [1]), y, StridedView(offset: first * g.outChannels, strides: [1]),
                     shape: [rows * g.outChannels])
            }
        }
        if let residual {
            let dense = StridedView(strides: [1])
            binary(.add, y, dense, residual, dense, y, shape: [y.count])
        }
    }

    /// The convolution through cuDNN; false where cuDNN is off, missing or declines it (nothing written).
    func cudnnConvolution(_ x: Storage, weight: Storage, bias: Storage, plus residual: Storage?, _ y: Storage,
                          geometry g: ChannelsLastConvolution) -> Bool {
        guard useCuDNN, x.dtype == .float32, x.count > 0, y.count > 0, let oh = g.outHeight, let ow = g.outWidth else { return false }
        // cuDNN's legacy API indexes tensors with 32-bit integers.
        let largest = Swift.max(g.images * (g.height + g.kernelHeight) * (g.width + g.kernelWidth) * g.inChannels,
                                g.images * oh * ow * g.outChannels)
        guard largest < Int(Int32.max), let opened = cudnn else { return false }
        let (dnn, handle) = opened
        let bf16 = bf16Products
        let key = ConvolutionPlanKey(geometry: g, bf16: bf16, tf32: allowTF32 && !bf16, timed: cudnnTimesAlgorithms)
        if case .some(.none) = convolutionPlans[key] { return false }
        ensureCurrent()
        let e = ConvolutionPlan.padding(g.padding).explicit
        // The part of the padding cuDNN cannot take (it pads both sides alike): zeros around a copy of the input.
        let (ph, pw, c) = (g.height + e.top + e.bottom, g.width + e.left + e.right, g.inChannels)
        var padded: Storage? = nil
        // bf16: operands in bfloat16 (x's copy, or its values where it holds only those; the padding made in bf16), the
        // output in bfloat16 too (cuDNN's BFLOAT16 configuration): straight into y where y holds only bf16 values,
        // else into a scratch block that the bias kernel widens into y.
        var output16: Storage? = nil
        let px: DevicePointer, pWeight: DevicePointer, py: DevicePointer
        if bf16 {
            beginBF16Call()
            var x16 = bf16Operand(x)
            if e != .uniform(0) {
                let rows = g.images * ph, copy = bf16OnlyStorage(count: rows * pw * c)
                let copy16 = float32OrBF16(copy).bf16
                kernels(ConvolutionKernels.self, .float32).padNhwc16
                    .launch(on: self, grid: (Swift.min(rows, maxBlocks * 2), 1), x16: x16, y16: copy16, rows: rows, h: g.height,
                            w: g.width, c: c, top: e.top, left: e.left, ph: ph, pw: pw)
                (padded, x16) = (copy, copy16)
            }
            (px, pWeight) = (x16, bf16Operand(weight))
            let y16 = float32OrBF16(y).bf16
            if y16 == 0 { output16 = allocate((y.count + 1) / 2, .float32) }
            py = output16.map { addr($0) } ?? y16
        } else {
            var input = x
            if e != .uniform(0) {
                input = allocate(g.images * ph * pw * c, .float32)
                fill(input, value: 0)
                copy(x, StridedView(strides: [g.height * g.width * c, g.width * c, c, 1]), input,
                     StridedView(offset: (e.top * pw + e.left) * c, strides: [ph * pw * c, pw * c, c, 1]),
                     shape: [g.images, g.height, g.width, c])
                padded = input
            }
            (px, pWeight, py) = (addr(input), addr(weight), addr(y))
        }
        let plan: ConvolutionPlan
        if case .some(.some(let known)) = convolutionPlans[key] {
            plan = known
        } else {
            let made = convolutionPlan(key, dnn, operands: (px, pWeight, py))
            convolutionPlans.updateValue(made, forKey: key)
            guard let made else { return false }
            plan = made
        }
        let workspace = plan.workspaceBytes > 0 ? allocate((plan.workspaceBytes + 3) / 4, .float32) : nil
        var one: Float = 1, zero: Float = 0
        let started = profiler?.begin(stream)
        let status = dnn.cudnnConvolutionForward(handle, &one, plan.x, UnsafeRawPointer(bitPattern: UInt(px)), plan.w,
                                                 UnsafeRawPointer(bitPattern: UInt(pWeight)), plan.convolution, plan.algorithm,
                                                 workspace.map { UnsafeMutableRawPointer(bitPattern: UInt(addr($0))) } ?? nil,
                                                 plan.workspaceBytes, &zero, plan.y, UnsafeMutableRawPointer(bitPattern: UInt(py)))
        if let started {
            profiler!.end(started, "cudnn conv \(g.kernelHeight)x\(g.kernelWidth)/\(g.stride) \(g.images)x\(g.height)x\(g.width)x"
                          + "\(g.inChannels)->\(g.outChannels)\(bf16 ? " bf16" : key.tf32 ? " tf32" : "")", stream)
        }
        withExtendedLifetime((padded, workspace)) {}
        guard status == 0 else {
            // An algorithm cuDNN ranked but will not run (a math type it does not take with it, say): this convolution
            // goes to the im2col path from now on, and the reason is kept for the reports.
            cudnnPlanFailure = "\(g): cudnnConvolutionForward(algorithm \(plan.algorithm)): \(dnn.describe(status))"
            convolutionPlans.updateValue(nil, forKey: key)
            return false
        }
        if syncEveryLaunch { driver.must(driver.cuStreamSynchronize(stream), "cuStreamSynchronize after cuDNN") }
        let (yf, y16) = float32OrBF16(y), (rf, r16) = residual.map { float32OrBF16($0) } ?? (0, 0)
        let k = kernels(ConvolutionKernels.self, .float32)
        if y16 != 0 {
            k.convBias16.launch(on: self, grid: (blocks((y.count + 1) / 2), 1), y16: y16, b: addr(bias), r: rf, r16: r16,
                                n: y.count, channels: g.outChannels)
        } else {
            k.convBias.launch(on: self, grid: (blocks(y.count), 1), y: yf, y16: addr(output16), b: addr(bias), r: rf, r16: r16,
                              n: y.count, channels: g.outChannels)
        }
        withExtendedLifetime(output16) {}
        cudnnConvolutions += 1
        return true
    }

    /// Descriptors and an algorithm for one convolution, or nil (with `cudnnPlanFailure` saying why) where cuDNN
    /// refuses a descriptor or has no algorithm within the workspace limit. The algorithms are cuDNN's heuristic
    /// ranking, or with `cudnnTimesAlgorithms` its measured ranking on the call's own operands (x, w and y's
    /// addresses, y written over).
    func convolutionPlan(_ key: ConvolutionPlanKey, _ dnn: CuDNN, operands: (x: DevicePointer, w: DevicePointer, y: DevicePointer))
        -> ConvolutionPlan? {
        let g = key.geometry
        let (handle, type) = (cudnn!.handle, key.bf16 ? CuDNN.dataBFloat16 : CuDNN.dataFloat)
        let (padY, padX, explicit) = ConvolutionPlan.padding(g.padding)
        let h = g.height + explicit.top + explicit.bottom, w = g.width + explicit.left + explicit.right
        var failure: String?
        func ok(_ status: CuDNN.Status, _ what: String) -> Bool {
            if status == 0 { return true }
            failure = failure ?? "\(what): \(dnn.describe(status))"
            return false
        }
        var xd: OpaquePointer? = nil, wd: OpaquePointer? = nil, yd: OpaquePointer? = nil, cd: OpaquePointer? = nil
        // With the FMA-only math type cuDNN ranks FMA kernels; tensor-op math for bf16; TF32 allowed by default math.
        let math = key.bf16 ? CuDNN.mathTensorOp : key.tf32 ? CuDNN.mathDefault : CuDNN.mathFMA
        let perf = UnsafeMutableRawPointer.allocate(byteCount: CuDNN.perfBytes * CuDNN.forwardAlgorithmCount, alignment: 8)
        perf.initializeMemory(as: UInt8.self, repeating: 0, count: CuDNN.perfBytes * CuDNN.forwardAlgorithmCount)
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
              ok(dnn.cudnnSetConvolutionMathType(cd, math), "cudnnSetConvolutionMathType") else {
            cudnnPlanFailure = "\(g): \(failure!)"
            return nil
        }
        let ranked: Bool
        if key.timed {
            let space = allocate(CuDNN.findWorkspaceBytes / 4, .float32)
            ranked = ok(dnn.cudnnFindConvolutionForwardAlgorithmEx(
                handle, xd, UnsafeRawPointer(bitPattern: UInt(operands.x)), wd, UnsafeRawPointer(bitPattern: UInt(operands.w)), cd, yd,
                UnsafeMutableRawPointer(bitPattern: UInt(operands.y)), Int32(CuDNN.forwardAlgorithmCount), &returned, perf,
                UnsafeMutableRawPointer(bitPattern: UInt(addr(space))), CuDNN.findWorkspaceBytes), "cudnnFindConvolutionForwardAlgorithmEx")
            withExtendedLifetime(space) {}
        } else {
            ranked = ok(dnn.cudnnGetConvolutionForwardAlgorithm_v7(handle, xd, wd, cd, yd, Int32(CuDNN.forwardAlgorithmCount),
                                                                   &returned, perf), "cudnnGetConvolutionForwardAlgorithm_v7")
        }
        guard ranked else {
            cudnnPlanFailure = "\(g): \(failure!)"
            return nil
        }
        // The ranking, best first: the first that works within the workspace limit. float32 without TF32 keeps the FMA
        // math type (its kernels round as float32), taking the entries cuDNN gives with that math type first; otherwise
        // the entry's own math type goes with its algorithm.
        let entries = (0..<Swift.min(Int(returned), CuDNN.forwardAlgorithmCount)).map { perf + $0 * CuDNN.perfBytes }
        func mathType(_ entry: UnsafeMutableRawPointer) -> Int32 { entry.load(fromByteOffset: CuDNN.perfMathTypeOffset, as: Int32.self) }
        let strict = !key.bf16 && !key.tf32
        for entry in strict ? entries.filter({ mathType($0) == CuDNN.mathFMA }) + entries.filter({ mathType($0) != CuDNN.mathFMA })
                            : entries {
            let algorithm = entry.load(as: Int32.self)
            guard entry.load(fromByteOffset: CuDNN.perfStatusOffset, as: Int32.self) == 0,
                  entry.load(fromByteOffset: CuDNN.perfMemoryOffset, as: Int.self) <= CuDNN.maxWorkspaceBytes else { continue }
            var bytes = 0
            guard ok(dnn.cudnnSetConvolutionMathType(cd, strict ? CuDNN.mathFMA : mathType(entry)), "cudnnSetConvolutionMathType"),
                  ok(dnn.cudnnGetConvolutionForwardWorkspaceSize(handle, xd, wd, cd, yd, algorithm, &bytes),
                     "cudnnGetConvolutionForwardWorkspaceSize(algorithm \(algorithm))"),
                  bytes <= CuDNN.maxWorkspaceBytes else { continue }
            return ConvolutionPlan(x: xd!, w: wd!, y: yd!, convolution: cd!, algorithm: algorithm, workspaceBytes: bytes)
        }
        cudnnPlanFailure = "\(g): " + (failure ?? "no algorithm among cuDNN's \(returned) within \(CuDNN.maxWorkspaceBytes >> 20) MiB of workspace")
        return nil
    }
}
