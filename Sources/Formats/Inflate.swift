extension Deflate {
    /// Decodes raw DEFLATE data starting at `start`; returns the output and the index of the first byte
    /// after the final block. Every length, distance and code is bounds-checked, and more than
    /// `maxOutput` bytes of output is an error.
    public static func inflate(_ data: [UInt8], start: Int = 0, maxOutput: Int) throws -> (output: [UInt8], end: Int) {
        try data.withUnsafeBufferPointer { input in
            var state = Inflater(input: input, pos: min(max(start, 0), input.count), maxOutput: max(maxOutput, 0))
            try state.run()
            state.out.removeSubrange(state.count...)
            return (state.out, state.consumedBytes)
        }
    }

    /// The first `count` bytes that raw DEFLATE data starting at `start` decodes to (all of them when
    /// there are fewer), decoding no further than that: a reader can look at a format header inside a
    /// compressed file, and so learn how large the whole output may be, before decompressing the rest.
    /// Errors in the part decoded are thrown; the data after it is not checked.
    public static func inflatePrefix(_ data: [UInt8], start: Int = 0, count: Int) throws -> [UInt8] {
        let wanted = max(count, 0)
        return try data.withUnsafeBufferPointer { input in
            // The write that reaches `wanted` is at most a 65535-byte stored block: that bounds the buffer.
            let (bound, overflow) = wanted.addingReportingOverflow(65535)
            var state = Inflater(input: input, pos: min(max(start, 0), input.count), maxOutput: overflow ? Int.max : bound)
            state.stopAt = wanted
            do {
                if wanted > 0 { try state.run() }
            } catch is Inflater.PrefixComplete {
                // Enough output for the caller.
            }
            return Array(state.out[0..<min(wanted, state.count)])
        }
    }

    /// A table-driven decoder: a lookup on the next `bits` input bits (LSB first) gives the symbol and
    /// its code length directly. Entries are `symbol << 4 | length`; 0 marks bit patterns that no code
    /// uses (possible in incomplete codes) and decodes as an error.
    struct HuffmanTable {
        var table: [UInt16]
        var bits: Int

        init(lengths: ArraySlice<UInt8>, what: String) throws {
            var countPerLength = [Int](repeating: 0, count: 16)
            var maxLength = 0
            for l in lengths where l > 0 {
                countPerLength[Int(l)] += 1
                maxLength = max(maxLength, Int(l))
            }
            var left = 1
            for len in 1...15 {
                left = left << 1 - countPerLength[len]
                if left < 0 { throw FormatError("DEFLATE: over-subscribed \(what) Huffman code") }
            }
            bits = max(maxLength, 1)
            table = [UInt16](repeating: 0, count: 1 << bits)
            var next = [Int](repeating: 0, count: 16)
            var code = 0
            for len in 1...15 {
                code = (code + countPerLength[len - 1]) << 1
                next[len] = code
            }
            for (offset, l) in lengths.enumerated() where l > 0 {
                let len = Int(l)
                var c = next[len]
                next[len] += 1
                var reversed = 0
                for _ in 0..<len {
                    reversed = reversed << 1 | (c & 1)
                    c >>= 1
                }
                let entry = UInt16(offset << 4 | len)
                var index = reversed
                while index < table.count {
                    table[index] = entry
                    index += 1 << len
                }
            }
        }
    }

    struct Inflater {
        let input: UnsafeBufferPointer<UInt8>
        var pos: Int
        let maxOutput: Int
        var bitBuffer: UInt64 = 0
        var bitCount = 0
        /// Output buffer, grown geometrically; only `out[0..<count]` is meaningful. Writing through an
        /// index (rather than appending slices of `out` to itself) keeps back-references copy-free.
        var out: [UInt8]
        var count = 0
        /// Decoding stops (throwing `PrefixComplete`) once this much output exists; only `inflatePrefix` sets it.
        var stopAt = Int.max

        struct PrefixComplete: Error {}

        init(input: UnsafeBufferPointer<UInt8>, pos: Int, maxOutput: Int) {
            self.input = input
            self.pos = pos
            self.maxOutput = maxOutput
            out = [UInt8](repeating: 0, count: min(maxOutput, max(4096, input.count * 4)))
        }

        /// Makes room for `n` more bytes, refusing to go past `maxOutput`.
        @inline(__always)
        mutating func reserve(_ n: Int) throws {
            guard maxOutput - count >= n else { throw outputLimit() }
            if out.count - count < n {
                let grown = min(maxOutput, max(count + n, out.count * 2))
                out.append(contentsOf: repeatElement(0, count: grown - out.count))
            }
        }

        /// Bytes consumed, not counting whole bytes prefetched into the bit buffer.
        var consumedBytes: Int { pos - bitCount / 8 }

        @inline(__always)
        mutating func refill() {
            while bitCount <= 56 && pos < input.count {
                bitBuffer |= UInt64(input[pos]) << UInt64(bitCount)
                pos += 1
                bitCount += 8
            }
        }

        @inline(__always)
        mutating func bits(_ n: Int) throws -> Int {
            if bitCount < n {
                refill()
                guard bitCount >= n else { throw FormatError("DEFLATE: unexpected end of compressed data") }
            }
            let v = Int(bitBuffer & ((1 << UInt64(n)) - 1))
            bitBuffer >>= UInt64(n)
            bitCount -= n
            return v
        }

        @inline(__always)
        mutating func decode(_ h: HuffmanTable) throws -> Int {
            if bitCount < h.bits { refill() }
            // Near the end of input the buffer may hold fewer bits than the table width; the missing
            // high bits read as zero, and the length check below catches codes that really ran out.
            let entry = Int(h.table[Int(bitBuffer & ((1 << UInt64(h.bits)) - 1))])
            let length = entry & 15
            guard length != 0 else { throw FormatError("DEFLATE: invalid Huffman code in compressed data") }
            guard length <= bitCount else { throw FormatError("DEFLATE: unexpected end of compressed data") }
            bitBuffer >>= UInt64(length)
            bitCount -= length
            return entry >> 4
        }

        mutating func run() throws {
            var final = false
            while !final {
                final = try bits(1) == 1
                switch try bits(2) {
                case 0: try storedBlock()
                case 1: try huffmanBlock(Deflate.fixedLiteralTable, Deflate.fixedDistanceTable)
                case 2:
                    let (lit, dist) = try dynamicTables()
                    try huffmanBlock(lit, dist)
                default: throw FormatError("DEFLATE: invalid block type 3")
                }
            }
        }

        mutating func storedBlock() throws {
            _ = try bits(bitCount & 7)
            let len = try bits(16)
            let nlen = try bits(16)
            guard len == (~nlen & 0xFFFF) else { throw FormatError("DEFLATE: stored block length check failed") }
            // Hand prefetched whole bytes back to the input so the block can be copied directly.
            pos -= bitCount / 8
            bitBuffer = 0
            bitCount = 0
            guard input.count - pos >= len else { throw FormatError("DEFLATE: stored block runs past the end of the data") }
            try reserve(len)
            for k in 0..<len { out[count + k] = input[pos + k] }
            count += len
            pos += len
            if count >= stopAt { throw PrefixComplete() }
        }

        func outputLimit() -> FormatError {
            FormatError("DEFLATE: decompressed data exceeds the expected \(maxOutput) bytes")
        }

        mutating func dynamicTables() throws -> (HuffmanTable, HuffmanTable) {
            let hlit = try bits(5) + 257
            let hdist = try bits(5) + 1
            let hclen = try bits(4) + 4
            guard hlit <= 286 else { throw FormatError("DEFLATE: too many literal/length codes (\(hlit))") }
            guard hdist <= 30 else { throw FormatError("DEFLATE: too many distance codes (\(hdist))") }
            var clLengths = [UInt8](repeating: 0, count: 19)
            for i in 0..<hclen { clLengths[Deflate.codeLengthOrder[i]] = UInt8(try bits(3)) }
            let clTable = try HuffmanTable(lengths: clLengths[...], what: "code length")
            var lengths = [UInt8](repeating: 0, count: hlit + hdist)
            var i = 0
            while i < lengths.count {
                let symbol = try decode(clTable)
                if symbol < 16 {
                    lengths[i] = UInt8(symbol)
                    i += 1
                    continue
                }
                let value: UInt8
                let repeatCount: Int
                switch symbol {
                case 16:
                    guard i > 0 else { throw FormatError("DEFLATE: repeat code with no previous length") }
                    value = lengths[i - 1]
                    repeatCount = 3 + (try bits(2))
                case 17:
                    value = 0
                    repeatCount = 3 + (try bits(3))
                default:
                    value = 0
                    repeatCount = 11 + (try bits(7))
                }
                guard repeatCount <= lengths.count - i else {
                    throw FormatError("DEFLATE: code length repeat runs past the end of the lengths")
                }
                for _ in 0..<repeatCount {
                    lengths[i] = value
                    i += 1
                }
            }
            guard lengths[256] != 0 else { throw FormatError("DEFLATE: dynamic block has no end-of-block code") }
            let lit = try HuffmanTable(lengths: lengths[0..<hlit], what: "literal/length")
            let dist = try HuffmanTable(lengths: lengths[hlit...], what: "distance")
            return (lit, dist)
        }

        mutating func huffmanBlock(_ lit: HuffmanTable, _ dist: HuffmanTable) throws {
            while true {
                let symbol = try decode(lit)
                if symbol < 256 {
                    try reserve(1)
                    out[count] = UInt8(symbol)
                    count += 1
                    if count >= stopAt { throw PrefixComplete() }
                    continue
                }
                if symbol == 256 { return }
                let lc = symbol - 257
                guard lc < 29 else { throw FormatError("DEFLATE: invalid length code \(symbol)") }
                let length = Deflate.lengthBase[lc] + (try bits(Deflate.lengthExtra[lc]))
                let dc = try decode(dist)
                guard dc < 30 else { throw FormatError("DEFLATE: invalid distance code \(dc)") }
                let distance = Deflate.distBase[dc] + (try bits(Deflate.distExtra[dc]))
                guard distance <= count else {
                    throw FormatError("DEFLATE: distance \(distance) reaches before the start of the output")
                }
                try reserve(length)
                let from = count - distance
                let to = count
                // Byte by byte on purpose: when distance < length the copy reads bytes it just wrote.
                out.withUnsafeMutableBufferPointer { o in
                    for k in 0..<length { o[to + k] = o[from + k] }
                }
                count += length
                if count >= stopAt { throw PrefixComplete() }
            }
        }
    }

    static let fixedLiteralTable: HuffmanTable = {
        // The fixed code is valid by construction (RFC 1951 3.2.6); a failure here would be a typo in
        // the tables above, caught by the first test that inflates a fixed block.
        (try? HuffmanTable(lengths: fixedLiteralLengths[...], what: "fixed")) ?? HuffmanTable.empty
    }()
    static let fixedDistanceTable: HuffmanTable = {
        // 32 entries although only 30 are valid: codes 30/31 exist in the fixed code and are refused
        // when decoded.
        (try? HuffmanTable(lengths: [UInt8](repeating: 5, count: 32)[...], what: "fixed")) ?? HuffmanTable.empty
    }()
}

extension Deflate.HuffmanTable {
    static let empty = Deflate.HuffmanTable(table: [0, 0], bits: 1)

    init(table: [UInt16], bits: Int) {
        self.table = table
        self.bits = bits
    }
}
