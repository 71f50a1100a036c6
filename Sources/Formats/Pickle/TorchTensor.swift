/// Element types of PyTorch storages, as the typed storage classes (`torch.FloatStorage`, ...) in pickles name them.
public enum TorchDType: String, CaseIterable, Sendable {
    case float32, float64, float16, bfloat16, int64, int32, int16, int8, uint8, bool

    public var byteSize: Int {
        switch self {
        case .float64, .int64: return 8
        case .float32, .int32: return 4
        case .float16, .bfloat16, .int16: return 2
        case .int8, .uint8, .bool: return 1
        }
    }

    /// From a typed storage class name (`FloatStorage`), as persistent ids and `torch.save` write them.
    public init?(storageClass: String) {
        let table: [String: TorchDType] = [
            "FloatStorage": .float32, "DoubleStorage": .float64, "HalfStorage": .float16, "BFloat16Storage": .bfloat16,
            "LongStorage": .int64, "IntStorage": .int32, "ShortStorage": .int16, "CharStorage": .int8,
            "ByteStorage": .uint8, "BoolStorage": .bool,
            // An untyped storage is raw bytes; the tensor's dtype then comes from elsewhere, which no file here needs.
            "UntypedStorage": .uint8,
        ]
        guard let d = table[storageClass] else { return nil }
        self = d
    }
}

/// The raw little-endian bytes of one storage, `count` elements of `dtype`.
public struct TorchStorage: Sendable {
    public let dtype: TorchDType
    public let count: Int
    let bytes: ArraySlice<UInt8>

    /// `bytes` must hold exactly `count` elements (callers check it against the file first).
    init(dtype: TorchDType, count: Int, bytes: ArraySlice<UInt8>) {
        precondition(bytes.count == count * dtype.byteSize, "storage of \(count) \(dtype) elements in \(bytes.count) bytes")
        self.dtype = dtype
        self.count = count
        self.bytes = bytes
    }
}

/// A tensor as `torch._utils._rebuild_tensor_v2` would build it: a strided view of a storage. The values are
/// decoded only when asked for, straight from the file's bytes.
public struct TorchTensor: Sendable {
    public let shape: [Int]
    public let storage: TorchStorage
    public let offset: Int
    public let strides: [Int]
    /// Element count (the product of `shape`).
    public let count: Int

    public var dtype: TorchDType { storage.dtype }

    /// Checks that every element of the view lies inside the storage; `what` names the tensor in errors.
    init(storage: TorchStorage, offset: Int, shape: [Int], strides: [Int], what: String) throws {
        guard shape.count == strides.count else {
            throw FormatError("\(what): size \(shapeString(shape)) and stride \(shapeString(strides)) differ in length")
        }
        guard offset >= 0, strides.allSatisfy({ $0 >= 0 }) else {
            throw FormatError("\(what): negative storage offset \(offset) or stride \(shapeString(strides))")
        }
        guard let count = elementCount(of: shape) else {
            throw FormatError("\(what): element count of size \(shapeString(shape)) overflows")
        }
        if count > 0 {
            var last = offset
            for (d, s) in zip(shape, strides) {
                let (step, o1) = (d - 1).multipliedReportingOverflow(by: s)
                let (sum, o2) = last.addingReportingOverflow(step)
                guard !o1, !o2 else { throw FormatError("\(what): stride \(shapeString(strides)) overflows") }
                last = sum
            }
            guard last < storage.count else {
                throw FormatError("\(what): a view of size \(shapeString(shape)) at offset \(offset) with stride "
                                  + "\(shapeString(strides)) reaches element \(last) of a storage of \(storage.count)")
            }
        }
        self.shape = shape
        self.storage = storage
        self.offset = offset
        self.strides = strides
        self.count = count
    }

    /// Whether the view is the `count` elements from `offset` in row-major order (strides of size-1 axes do not matter).
    var isContiguous: Bool {
        var expected = 1
        for (d, s) in zip(shape, strides).reversed() where d != 1 {
            if s != expected { return false }
            expected *= d
        }
        return true
    }

    /// Storage positions of the elements in row-major order.
    func forEachStorageIndex(_ body: (Int) -> Void) {
        guard count > 0 else { return }
        if isContiguous {
            for i in offset..<(offset + count) { body(i) }
            return
        }
        var index = [Int](repeating: 0, count: shape.count)
        var position = offset
        for _ in 0..<count {
            body(position)
            var axis = shape.count - 1
            while axis >= 0 {
                index[axis] += 1
                position += strides[axis]
                if index[axis] < shape[axis] { break }
                position -= strides[axis] * shape[axis]
                index[axis] = 0
                axis -= 1
            }
        }
    }

    /// The values as Float: exact for float32, float16, bfloat16 and integers up to 2^24; float64 rounds.
    public func floats() -> [Float] {
        if storage.dtype == .float32, isContiguous {
            return storage.bytes.withUnsafeBytes { RawLE.floats($0, offset: offset * 4, count: count) }
        }
        return decode { raw, i in
            switch storage.dtype {
            case .float32: return Float(bitPattern: RawLE.u32(raw, i))
            case .float64: return Float(Double(bitPattern: RawLE.u64(raw, i)))
            case .float16: return HalfConversion.halfToFloat(RawLE.u16(raw, i))
            case .bfloat16: return HalfConversion.bfloat16ToFloat(RawLE.u16(raw, i))
            default: return Float(integer(raw, i))
            }
        }
    }

    /// The values as Double: exact for every dtype but integers beyond 2^53.
    public func doubles() -> [Double] {
        decode { raw, i in
            switch storage.dtype {
            case .float64: return Double(bitPattern: RawLE.u64(raw, i))
            case .float32, .float16, .bfloat16: return Double(TorchTensor.float(raw, i, storage.dtype))
            default: return Double(integer(raw, i))
            }
        }
    }

    /// The values of an integer or bool tensor, exactly; nil for floating-point tensors.
    public func integers() -> [Int]? {
        switch storage.dtype {
        case .float32, .float64, .float16, .bfloat16: return nil
        default: return decode { raw, i in integer(raw, i) }
        }
    }

    private static func float(_ raw: UnsafeRawBufferPointer, _ i: Int, _ dtype: TorchDType) -> Float {
        switch dtype {
        case .float16: return HalfConversion.halfToFloat(RawLE.u16(raw, i))
        case .bfloat16: return HalfConversion.bfloat16ToFloat(RawLE.u16(raw, i))
        default: return Float(bitPattern: RawLE.u32(raw, i))
        }
    }

    private func integer(_ raw: UnsafeRawBufferPointer, _ i: Int) -> Int {
        switch storage.dtype {
        case .int64: return Int(Int64(bitPattern: RawLE.u64(raw, i)))
        case .int32: return Int(Int32(bitPattern: RawLE.u32(raw, i)))
        case .int16: return Int(Int16(bitPattern: RawLE.u16(raw, i)))
        case .int8: return Int(Int8(bitPattern: raw[i]))
        case .uint8: return Int(raw[i])
        case .bool: return raw[i] == 0 ? 0 : 1
        default: preconditionFailure("integer read of a \(storage.dtype) storage")
        }
    }

    private func decode<T>(_ element: (UnsafeRawBufferPointer, Int) -> T) -> [T] {
        storage.bytes.withUnsafeBytes { raw in
            var out: [T] = []
            out.reserveCapacity(count)
            forEachStorageIndex { out.append(element(raw, $0)) }
            return out
        }
    }
}
