import TensorCore

// ConvolutionBackend on Convolution.cu's kernels.
extension CUDABackend: ConvolutionBackend {
    public func im2col(_ x: Storage, _ cols: Storage, images: Int, channels: Int, height: Int, width: Int, window: Window2D) {
        guard cols.count > 0 else { return }
        let (oh, ow) = window.outputSize(height: height, width: width)!
        kernels(ConvolutionKernels.self, x.dtype).im2col
            .launch(on: self, grid: (blocks(cols.count), 1), x: addr(x), cols: addr(cols), planes: images * channels, h: height,
                    w: width, g: KernelWindow(window: window, outHeight: oh, outWidth: ow))
    }

    public func pool2d(_ kind: PoolKind, _ x: Storage, _ y: Storage, planes: Int, height: Int, width: Int, window: Window2D) {
        guard y.count > 0 else { return }
        let (oh, ow) = window.outputSize(height: height, width: width)!
        guard let pool = kernels(ConvolutionKernels.self, x.dtype).pool.first(where: { $0.kind == kind }) else {
            preconditionFailure("Convolution.cu has no pool kernel for \(kind)")
        }
        pool.launch(on: self, grid: (blocks(y.count), 1), x: addr(x), y: addr(y), planes: planes, h: height, w: width,
                    g: KernelWindow(window: window, outHeight: oh, outWidth: ow))
    }

    public func resizeBilinear(_ x: Storage, _ y: Storage, planes: Int, height: Int, width: Int, outHeight: Int, outWidth: Int) {
        guard y.count > 0 else { return }
        kernels(ConvolutionKernels.self, x.dtype).resizeBilinear
            .launch(on: self, grid: (blocks(y.count), 1), x: addr(x), y: addr(y), planes: planes, h: height, w: width, oh: outHeight,
                    ow: outWidth)
    }

    public func addBiasReLU(_ y: Storage, bias: Storage, images: Int, channels: Int, plane: Int) {
        guard y.count > 0 else { return }
        kernels(ConvolutionKernels.self, y.dtype).biasRelu
            .launch(on: self, grid: (blocks(y.count), 1), y: addr(y), b: addr(bias), rows: images * channels, channels: channels,
                    plane: plane)
    }
}
