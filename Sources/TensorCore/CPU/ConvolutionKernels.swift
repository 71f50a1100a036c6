/// The CPU side of `ConvolutionBackend`: plain loops split over planes with `Parallel`, for both element types.
extension CPUBackend: ConvolutionBackend {
    @inline(__always) private func typedPointer<T>(_ s: Storage, _: T.Type) -> UnsafeMutablePointer<T> {
        guard let c = s as? CPUStorage else { preconditionFailure("a \(s.backend.name) tensor was given to the CPU backend") }
        return c.ptr(T.self)
    }

    public func im2col(_ x: Storage, _ cols: Storage, images: Int, channels: Int, height: Int, width: Int, window: Window2D) {
        func run<T: CPUFloat>(_: T.Type) {
            ConvolutionKernels.im2col(typedPointer(x, T.self), typedPointer(cols, T.self), planes: images * channels,
                                      height: height, width: width, window: window)
        }
        if x.dtype == .float32 { run(Float.self) } else { run(Double.self) }
    }

    public func pool2d(_ kind: PoolKind, _ x: Storage, _ y: Storage, planes: Int, height: Int, width: Int, window: Window2D) {
        func run<T: CPUFloat>(_: T.Type) {
            ConvolutionKernels.pool(kind, typedPointer(x, T.self), typedPointer(y, T.self), planes: planes,
                                    height: height, width: width, window: window)
        }
        if x.dtype == .float32 { run(Float.self) } else { run(Double.self) }
    }

    public func resizeBilinear(_ x: Storage, _ y: Storage, planes: Int, height: Int, width: Int, outHeight: Int, outWidth: Int) {
        func run<T: CPUFloat>(_: T.Type) {
            ConvolutionKernels.resize(typedPointer(x, T.self), typedPointer(y, T.self), planes: planes, height: height,
                                      width: width, outHeight: outHeight, outWidth: outWidth)
        }
        if x.dtype == .float32 { run(Float.self) } else { run(Double.self) }
    }

    public func addBiasReLU(_ y: Storage, bias: Storage, images: Int, channels: Int, plane: Int) {
        func run<T: CPUFloat>(_: T.Type) {
            let py = typedPointer(y, T.self), pb = typedPointer(bias, T.self)
            Parallel.forRanges(images * channels, grain: Swift.max(1, 32_768 / Swift.max(plane, 1))) { r in
                for row in r {
                    let b = pb[row % channels], p = py + row * plane
                    // `v < 0 ? 0 : v` keeps NaN (as PyTorch's relu does) rather than hiding it as 0.
                    for i in 0..<plane { let v = p[i] + b; p[i] = v < 0 ? 0 : v }
                }
            }
        }
        if y.dtype == .float32 { run(Float.self) } else { run(Double.self) }
    }
}

enum ConvolutionKernels {
    /// Per input plane (an image's channel), its kh * kw rows of the im2col matrix: planes of one image are
    /// consecutive, so plane p's rows start at p * kh * kw * OH * OW whatever the channel count.
    static func im2col<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ cols: UnsafeMutablePointer<T>, planes: Int,
                                    height h: Int, width w: Int, window: Window2D) {
        let (oh, ow) = window.outputSize(height: h, width: w)!
        let kh = window.kernelHeight, kw = window.kernelWidth, sy = window.strideY, sx = window.strideX
        let py = window.padY, px = window.padX, plane = oh * ow
        Parallel.forRanges(planes, grain: Swift.max(1, 65_536 / Swift.max(kh * kw * plane, 1))) { r in
            for p in r {
                let src = x + p * h * w, dst = cols + p * kh * kw * plane
                for j in 0..<kw {
                    // Output columns whose input column ox * sx - px + j lies inside the image: lo..<hi.
                    let lo = px - j <= 0 ? 0 : (px - j + sx - 1) / sx
                    let last = w - 1 + px - j
                    let hi = Swift.max(lo, last < 0 ? 0 : Swift.min(ow, last / sx + 1))
                    for i in 0..<kh {
                        let row = dst + (i * kw + j) * plane
                        for oy in 0..<oh {
                            let out = row + oy * ow
                            let iy = oy * sy - py + i
                            if iy < 0 || iy >= h {
                                out.update(repeating: 0, count: ow)
                                continue
                            }
                            let line = src + iy * w - px + j
                            for ox in 0..<lo { out[ox] = 0 }
                            if sx == 1 {
                                (out + lo).update(from: line + lo, count: hi - lo)
                            } else {
                                for ox in lo..<hi { out[ox] = line[ox * sx] }
                            }
                            for ox in hi..<ow { out[ox] = 0 }
                        }
                    }
                }
            }
        }
    }

    static func pool<T: CPUFloat>(_ kind: PoolKind, _ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, planes: Int,
                                  height h: Int, width w: Int, window: Window2D) {
        let (oh, ow) = window.outputSize(height: h, width: w)!
        let kh = window.kernelHeight, kw = window.kernelWidth
        let fullWindow = T(kh * kw)
        Parallel.forRanges(planes, grain: Swift.max(1, 16_384 / Swift.max(oh * ow * kh * kw, 1))) { r in
            for p in r {
                let src = x + p * h * w, dst = y + p * oh * ow
                for oy in 0..<oh {
                    let y0 = oy * window.strideY - window.padY
                    let ys = Swift.max(y0, 0), ye = Swift.min(y0 + kh, h)
                    for ox in 0..<ow {
                        let x0 = ox * window.strideX - window.padX
                        let xs = Swift.max(x0, 0), xe = Swift.min(x0 + kw, w)
                        var acc: T = kind == .max ? -T.infinity : 0
                        for iy in ys..<ye {
                            let line = src + iy * w
                            if kind == .max {
                                // NaN wins and stays, as in PyTorch's max pooling.
                                for ix in xs..<xe { let v = line[ix]; if v.isNaN || v > acc { acc = v } }
                            } else {
                                for ix in xs..<xe { acc += line[ix] }
                            }
                        }
                        switch kind {
                        case .max: dst[oy * ow + ox] = acc
                        case .averageExcludingPadding: dst[oy * ow + ox] = acc / T((ye - ys) * (xe - xs))
                        case .averageIncludingPadding: dst[oy * ow + ox] = acc / fullWindow
                        }
                    }
                }
            }
        }
    }

    /// Where output index `o` samples an input axis of `size` resized to `outSize` (TensorFlow 1's
    /// resize_bilinear without half-pixel centers): the two input indices and the weight of the second.
    /// In double, so the CUDA kernels, which use the same expression, sample the same points.
    @inline(__always)
    static func tap(_ o: Int, size: Int, outSize: Int) -> (lower: Int, upper: Int, fraction: Double) {
        let source = Double(o) * (Double(size) / Double(outSize))
        let lower = Int(source.rounded(.down))
        return (lower, Swift.min(lower + 1, size - 1), source - Double(lower))
    }

    static func resize<T: CPUFloat>(_ x: UnsafeMutablePointer<T>, _ y: UnsafeMutablePointer<T>, planes: Int, height h: Int,
                                    width w: Int, outHeight oh: Int, outWidth ow: Int) {
        let rows = (0..<oh).map { tap($0, size: h, outSize: oh) }
        let columns = (0..<ow).map { tap($0, size: w, outSize: ow) }
        Parallel.forRanges(planes, grain: Swift.max(1, 16_384 / Swift.max(oh * ow, 1))) { r in
            for p in r {
                let src = x + p * h * w, dst = y + p * oh * ow
                for oy in 0..<oh {
                    let (r0, r1, fy) = rows[oy]
                    let top = src + r0 * w, bottom = src + r1 * w, wy = T(fy)
                    for ox in 0..<ow {
                        let (c0, c1, fx) = columns[ox]
                        let wx = T(fx)
                        let upper = (1 - wx) * top[c0] + wx * top[c1]
                        let lower = (1 - wx) * bottom[c0] + wx * bottom[c1]
                        dst[oy * ow + ox] = (1 - wy) * upper + wy * lower
                    }
                }
            }
        }
    }
}
