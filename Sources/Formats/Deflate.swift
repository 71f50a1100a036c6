/// DEFLATE (RFC 1951) compression and decompression, plus the zlib (RFC 1950) wrapper PNG uses.
public enum Deflate {
    // MARK: Shared tables

    static let lengthBase: [Int] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59,
                                    67, 83, 99, 115, 131, 163, 195, 227, 258]
    static let lengthExtra: [Int] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3,
                                     4, 4, 4, 4, 5, 5, 5, 5, 0]
    static let distBase: [Int] = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769,
                                  1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
    static let distExtra: [Int] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8,
                                   9, 9, 10, 10, 11, 11, 12, 12, 13, 13]
    /// Order in which code-length code lengths are stored in a dynamic block header.
    static let codeLengthOrder: [Int] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]

    static let fixedLiteralLengths: [UInt8] = (0..<288).map { s -> UInt8 in
        s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8
    }
    static let fixedDistanceLengths = [UInt8](repeating: 5, count: 30)

    /// Length (3...258) to length code index (0...28).
    static let lengthCodeOf: [UInt8] = {
        var table = [UInt8](repeating: 0, count: 259)
        for code in 0..<29 {
            let top = code == 28 ? 258 : lengthBase[code] + (1 << lengthExtra[code]) - 1
            for len in lengthBase[code]...top where len <= 258 { table[len] = UInt8(code) }
        }
        table[258] = 28
        return table
    }()

    /// Distance (1...32768) to distance code (0...29).
    static let distCodeOf: [UInt8] = {
        var table = [UInt8](repeating: 0, count: 32769)
        for code in 0..<30 {
            let top = distBase[code] + (1 << distExtra[code]) - 1
            for d in distBase[code]...min(top, 32768) { table[d] = UInt8(code) }
        }
        return table
    }()

    // MARK: zlib

    /// A zlib stream (header, DEFLATE data, Adler-32).
    public static func zlibCompress(_ data: [UInt8]) -> [UInt8] {
        // 0x78 0xDA: 32 KB window, "maximum compression" hint; 0x78DA is a multiple of 31 as required.
        var out: [UInt8] = [0x78, 0xDA]
        out += compress(data)
        let adler = Checksum.adler32(data)
        out += [UInt8(adler >> 24), UInt8(truncatingIfNeeded: adler >> 16),
                UInt8(truncatingIfNeeded: adler >> 8), UInt8(truncatingIfNeeded: adler)]
        return out
    }

    /// Decodes a zlib stream, refusing more than `maxOutput` bytes of output (a few KB of DEFLATE can
    /// expand to gigabytes) and checking the Adler-32 trailer.
    public static func zlibDecompress(_ data: [UInt8], maxOutput: Int) throws -> [UInt8] {
        guard data.count >= 6 else { throw FormatError("zlib stream is too short (\(data.count) bytes)") }
        let cmf = data[0], flg = data[1]
        guard (Int(cmf) << 8 | Int(flg)) % 31 == 0 else { throw FormatError("zlib header check bits are wrong") }
        guard cmf & 0x0F == 8, cmf >> 4 <= 7 else {
            throw FormatError("zlib stream uses an unknown compression method (CMF 0x\(String(cmf, radix: 16)))")
        }
        guard flg & 0x20 == 0 else { throw FormatError("zlib stream needs a preset dictionary, which is not supported") }
        let (out, end) = try inflate(data, start: 2, maxOutput: maxOutput)
        guard data.count - end >= 4 else { throw FormatError("zlib stream is missing its Adler-32 trailer") }
        let stored = UInt32(data[end]) << 24 | UInt32(data[end + 1]) << 16 | UInt32(data[end + 2]) << 8 | UInt32(data[end + 3])
        let actual = Checksum.adler32(out)
        guard stored == actual else {
            throw FormatError("zlib Adler-32 mismatch: stored 0x\(String(stored, radix: 16)), computed 0x\(String(actual, radix: 16))")
        }
        return out
    }

    // MARK: Compression

    /// Raw DEFLATE: LZ77 over a 32 KB window with hash chains and one-step lazy matching; each block
    /// is emitted stored, with fixed codes or with its own Huffman codes, whichever is smallest.
    public static func compress(_ data: [UInt8]) -> [UInt8] {
        var writer = BitWriter()
        writer.out.reserveCapacity(data.count / 2 + 64)
        if data.isEmpty {
            writer.put(1, 1)
            writer.put(1, 2)
            writer.put(0, 7)  // end-of-block in the fixed code
            writer.flush()
            return writer.out
        }
        data.withUnsafeBufferPointer { input in
            var matcher = Matcher(input: input)
            var symbols: [UInt32] = []
            symbols.reserveCapacity(blockSymbols + 2)
            var blockStart = 0
            var i = 0
            var pending: (len: Int, dist: Int)? = nil
            let n = input.count
            while i < n {
                let (len, dist) = pending ?? matcher.find(at: i)
                if pending == nil { matcher.insert(i) }
                pending = nil
                if len >= 3 && len < 32 && i + 1 < n {
                    let next = matcher.find(at: i + 1)
                    matcher.insert(i + 1)
                    if next.len > len {
                        symbols.append(UInt32(input[i]))
                        i += 1
                        pending = next
                        continue
                    }
                    for p in (i + 2)..<(i + len) { matcher.insert(p) }
                } else if len >= 3 {
                    for p in (i + 1)..<(i + len) { matcher.insert(p) }
                }
                if len >= 3 {
                    symbols.append(0x8000_0000 | UInt32(len) << 16 | UInt32(dist))
                    i += len
                } else {
                    symbols.append(UInt32(input[i]))
                    i += 1
                }
                if symbols.count >= blockSymbols && pending == nil {
                    writeBlock(symbols, raw: UnsafeBufferPointer(rebasing: input[blockStart..<i]), final: i == n, to: &writer)
                    symbols.removeAll(keepingCapacity: true)
                    blockStart = i
                }
            }
            if blockStart < n || symbols.isEmpty == false {
                writeBlock(symbols, raw: UnsafeBufferPointer(rebasing: input[blockStart..<n]), final: true, to: &writer)
            }
        }
        writer.flush()
        return writer.out
    }

    static let blockSymbols = 1 << 15

    struct BitWriter {
        var out: [UInt8] = []
        var acc: UInt64 = 0
        var count = 0

        @inline(__always)
        mutating func put(_ bits: UInt32, _ n: Int) {
            acc |= UInt64(bits) << UInt64(count)
            count += n
            while count >= 8 {
                out.append(UInt8(truncatingIfNeeded: acc))
                acc >>= 8
                count -= 8
            }
        }

        mutating func flush() {
            if count > 0 {
                out.append(UInt8(truncatingIfNeeded: acc))
                acc = 0
                count = 0
            }
        }
    }

    /// Hash chains over the last 32 KB: `head` holds the newest position for each 3-byte hash and
    /// `prev` links each position to the previous one with the same hash.
    struct Matcher {
        static let hashBits = 15
        static let window = 32768
        /// zlib's MAX_DIST: keeps candidate distances safely inside the window.
        static let maxDistance = 32768 - 262
        static let maxChain = 128
        static let niceLength = 258

        let input: UnsafeBufferPointer<UInt8>
        var head: [Int32]
        var prev: [Int32]

        init(input: UnsafeBufferPointer<UInt8>) {
            self.input = input
            head = [Int32](repeating: -1, count: 1 << Matcher.hashBits)
            prev = [Int32](repeating: -1, count: Matcher.window)
        }

        @inline(__always)
        func hash(_ i: Int) -> Int {
            let v = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8 | UInt32(input[i + 2])
            return Int((v &* 0x9E37_79B1) >> UInt32(32 - Matcher.hashBits))
        }

        @inline(__always)
        mutating func insert(_ i: Int) {
            guard i + 3 <= input.count else { return }
            let h = hash(i)
            prev[i & (Matcher.window - 1)] = head[h]
            head[h] = Int32(i)
        }

        func find(at i: Int) -> (len: Int, dist: Int) {
            let n = input.count
            guard i + 3 <= n else { return (0, 0) }
            let maxLen = min(258, n - i)
            var best = 2, bestDist = 0
            var candidate = Int(head[hash(i)])
            var chain = Matcher.maxChain
            while candidate >= 0 && chain > 0 {
                let dist = i - candidate
                if dist <= 0 || dist > Matcher.maxDistance { break }
                if input[candidate + best] == input[i + best] || best >= maxLen {
                    var l = 0
                    while l < maxLen && input[candidate + l] == input[i + l] { l += 1 }
                    if l > best {
                        best = l
                        bestDist = dist
                        if l >= Matcher.niceLength || l >= maxLen { break }
                    }
                }
                let next = Int(prev[candidate & (Matcher.window - 1)])
                // Slots are reused every 32 KB; a link that does not point further back is stale.
                if next >= candidate { break }
                candidate = next
                chain -= 1
            }
            return best >= 3 ? (best, bestDist) : (0, 0)
        }
    }

    static func writeBlock(_ symbols: [UInt32], raw: UnsafeBufferPointer<UInt8>, final: Bool, to w: inout BitWriter) {
        var litFreq = [Int](repeating: 0, count: 286)
        var distFreq = [Int](repeating: 0, count: 30)
        var extraBits = 0
        for s in symbols {
            if s & 0x8000_0000 == 0 {
                litFreq[Int(s)] += 1
            } else {
                let lc = Int(lengthCodeOf[Int((s >> 16) & 0x1FF)])
                let dc = Int(distCodeOf[Int(s & 0xFFFF)])
                litFreq[257 + lc] += 1
                distFreq[dc] += 1
                extraBits += lengthExtra[lc] + distExtra[dc]
            }
        }
        litFreq[256] = 1

        func cost(_ freq: [Int], _ lengths: [UInt8]) -> Int {
            var total = 0
            for (f, l) in zip(freq, lengths) { total += f * Int(l) }
            return total
        }
        let fixedCost = 3 + cost(litFreq, fixedLiteralLengths) + cost(distFreq, fixedDistanceLengths) + extraBits

        let litLengths = huffmanLengths(litFreq, maxBits: 15)
        let distLengths = huffmanLengths(distFreq, maxBits: 15)
        let header = dynamicHeader(litLengths, distLengths)
        let dynamicCost = 3 + header.bits + cost(litFreq, litLengths) + cost(distFreq, distLengths) + extraBits

        let storedChunks = max(1, (raw.count + 65534) / 65535)
        let storedCost = raw.count * 8 + storedChunks * 40

        if storedCost <= min(fixedCost, dynamicCost) {
            var offset = 0
            for chunk in 0..<storedChunks {
                let len = min(65535, raw.count - offset)
                w.put(final && chunk == storedChunks - 1 ? 1 : 0, 1)
                w.put(0, 2)
                w.flush()
                w.out += [UInt8(len & 0xFF), UInt8(len >> 8), UInt8(~len & 0xFF), UInt8((~len >> 8) & 0xFF)]
                w.out.append(contentsOf: UnsafeBufferPointer(rebasing: raw[offset..<(offset + len)]))
                offset += len
            }
            return
        }
        w.put(final ? 1 : 0, 1)
        if fixedCost <= dynamicCost {
            w.put(1, 2)
            emitSymbols(symbols, litCodes: fixedLiteralCodes, distCodes: fixedDistanceCodes, to: &w)
        } else {
            w.put(2, 2)
            header.write(&w)
            emitSymbols(symbols, litCodes: canonicalCodes(litLengths), distCodes: canonicalCodes(distLengths), to: &w)
        }
    }

    /// A Huffman code as (bit-reversed code, length) per symbol, ready for an LSB-first bit writer.
    typealias Code = (bits: UInt32, length: Int)

    static let fixedLiteralCodes = canonicalCodes(fixedLiteralLengths)
    static let fixedDistanceCodes = canonicalCodes(fixedDistanceLengths)

    static func emitSymbols(_ symbols: [UInt32], litCodes: [Code], distCodes: [Code], to w: inout BitWriter) {
        for s in symbols {
            if s & 0x8000_0000 == 0 {
                let c = litCodes[Int(s)]
                w.put(c.bits, c.length)
            } else {
                let len = Int((s >> 16) & 0x1FF), dist = Int(s & 0xFFFF)
                let lc = Int(lengthCodeOf[len])
                let c = litCodes[257 + lc]
                w.put(c.bits, c.length)
                if lengthExtra[lc] > 0 { w.put(UInt32(len - lengthBase[lc]), lengthExtra[lc]) }
                let dc = Int(distCodeOf[dist])
                let d = distCodes[dc]
                w.put(d.bits, d.length)
                if distExtra[dc] > 0 { w.put(UInt32(dist - distBase[dc]), distExtra[dc]) }
            }
        }
        let eob = litCodes[256]
        w.put(eob.bits, eob.length)
    }

    static func canonicalCodes(_ lengths: [UInt8]) -> [Code] {
        var countPerLength = [Int](repeating: 0, count: 16)
        for l in lengths where l > 0 { countPerLength[Int(l)] += 1 }
        var next = [Int](repeating: 0, count: 16)
        var code = 0
        for bits in 1...15 {
            code = (code + countPerLength[bits - 1]) << 1
            next[bits] = code
        }
        var codes = [Code](repeating: (0, 0), count: lengths.count)
        for (symbol, l) in lengths.enumerated() where l > 0 {
            let length = Int(l)
            var c = next[length]
            next[length] += 1
            var reversed: UInt32 = 0
            for _ in 0..<length {
                reversed = reversed << 1 | UInt32(c & 1)
                c >>= 1
            }
            codes[symbol] = (reversed, length)
        }
        return codes
    }

    /// Huffman code lengths no longer than `maxBits`. Too-deep trees are fixed by halving the
    /// frequencies and rebuilding, which costs a little optimality on rare skewed blocks only. At least
    /// two symbols always get a code so the code is complete (some decoders dislike one-symbol codes).
    static func huffmanLengths(_ freq: [Int], maxBits: Int) -> [UInt8] {
        var f = freq
        var used = f.indices.filter { f[$0] > 0 }
        var filler = 0
        while used.count < 2 {
            if f[filler] == 0 { f[filler] = 1; used.append(filler) }
            filler += 1
        }
        while true {
            let lengths = unlimitedHuffmanLengths(f)
            if lengths.max() ?? 0 <= UInt8(maxBits) { return lengths }
            for i in f.indices where f[i] > 0 { f[i] = (f[i] + 1) / 2 }
        }
    }

    private static func unlimitedHuffmanLengths(_ freq: [Int]) -> [UInt8] {
        // Nodes 0..<n are leaves; internal nodes are appended. Symbol counts are tiny (<= 288), so a
        // sorted work list is fast enough.
        var weight: [Int] = freq
        var parent = [Int](repeating: -1, count: freq.count)
        var queue = freq.indices.filter { freq[$0] > 0 }.sorted { (freq[$0], $0) > (freq[$1], $1) }
        while queue.count > 1 {
            let a = queue.removeLast(), b = queue.removeLast()
            let node = weight.count
            weight.append(weight[a] + weight[b])
            parent.append(-1)
            parent[a] = node
            parent[b] = node
            let w = weight[node]
            var pos = queue.count
            while pos > 0 && weight[queue[pos - 1]] <= w { pos -= 1 }
            queue.insert(node, at: pos)
        }
        var lengths = [UInt8](repeating: 0, count: freq.count)
        var depth = [Int](repeating: 0, count: weight.count)
        if weight.count > freq.count {
            for node in stride(from: weight.count - 2, through: 0, by: -1) where parent[node] >= 0 {
                depth[node] = depth[parent[node]] + 1
            }
        }
        for s in freq.indices where freq[s] > 0 { lengths[s] = UInt8(min(depth[s], 255)) }
        return lengths
    }

    struct DynamicHeader {
        var hlit: Int, hdist: Int, hclen: Int
        var clCodes: [Code]
        var clLengths: [UInt8]
        var items: [(symbol: Int, extra: UInt32, extraBits: Int)]
        var bits: Int

        func write(_ w: inout BitWriter) {
            w.put(UInt32(hlit - 257), 5)
            w.put(UInt32(hdist - 1), 5)
            w.put(UInt32(hclen - 4), 4)
            for i in 0..<hclen { w.put(UInt32(clLengths[codeLengthOrder[i]]), 3) }
            for item in items {
                let c = clCodes[item.symbol]
                w.put(c.bits, c.length)
                if item.extraBits > 0 { w.put(item.extra, item.extraBits) }
            }
        }
    }

    /// Run-length codes the literal/length and distance code lengths with symbols 16/17/18 and
    /// builds the code-length code that transmits them.
    static func dynamicHeader(_ lit: [UInt8], _ dist: [UInt8]) -> DynamicHeader {
        var hlit = 286
        while hlit > 257 && lit[hlit - 1] == 0 { hlit -= 1 }
        var hdist = 30
        while hdist > 1 && dist[hdist - 1] == 0 { hdist -= 1 }
        let all = Array(lit[0..<hlit]) + Array(dist[0..<hdist])
        var items: [(symbol: Int, extra: UInt32, extraBits: Int)] = []
        var i = 0
        while i < all.count {
            let v = all[i]
            var run = 1
            while i + run < all.count && all[i + run] == v { run += 1 }
            if v == 0 {
                var left = run
                while left >= 11 { let r = min(left, 138); items.append((18, UInt32(r - 11), 7)); left -= r }
                if left >= 3 { items.append((17, UInt32(left - 3), 3)); left = 0 }
                while left > 0 { items.append((0, 0, 0)); left -= 1 }
            } else {
                items.append((Int(v), 0, 0))
                var left = run - 1
                while left >= 3 { let r = min(left, 6); items.append((16, UInt32(r - 3), 2)); left -= r }
                while left > 0 { items.append((Int(v), 0, 0)); left -= 1 }
            }
            i += run
        }
        var clFreq = [Int](repeating: 0, count: 19)
        for item in items { clFreq[item.symbol] += 1 }
        let clLengths = huffmanLengths(clFreq, maxBits: 7)
        var hclen = 19
        while hclen > 4 && clLengths[codeLengthOrder[hclen - 1]] == 0 { hclen -= 1 }
        var bits = 5 + 5 + 4 + 3 * hclen
        for item in items { bits += Int(clLengths[item.symbol]) + item.extraBits }
        return DynamicHeader(hlit: hlit, hdist: hdist, hclen: hclen, clCodes: canonicalCodes(clLengths),
                             clLengths: clLengths, items: items, bits: bits)
    }
}
