// The opcodes of pickle protocols 0 to 5 (Python's Lib/pickletools.py documents each one), run by `PickleMachine`.

extension PickleMachine {
    mutating func execute(_ op: UInt8) throws {
        switch op {
        // Protocol and framing.
        case 0x80:  // PROTO
            let version = try byte()
            guard version <= 5 else { throw fail("protocol \(version) is not supported (0 to 5 are)") }
        case 0x95:  // FRAME: an 8-byte length that only helps Python buffer; the opcodes inside are read as usual.
            let length = try unsigned(8)
            guard length <= UInt64(bytes.endIndex - position) else {
                throw fail("frame of \(length) bytes is longer than the \(bytes.endIndex - position) bytes left")
            }

        // The stack.
        case 0x28:  // MARK
            guard marks.count < document.limits.maxDepth else {
                throw fail("opens more than \(document.limits.maxDepth) MARKs at once")
            }
            marks.append(stack.count)
        case 0x30:  // POP (of an empty stack above a mark: the mark, as Python does)
            if stack.count == (marks.last ?? 0), !marks.isEmpty { marks.removeLast() } else { _ = try pop() }
        case 0x31:  // POP_MARK
            _ = try popToMark()
        case 0x32:  // DUP
            stack.append(try top())

        // Memo.
        case 0x94:  // MEMOIZE
            try remember(memo.count)
        case 0x70:  // PUT
            try remember(try decimal(try line(), what: "PUT index"))
        case 0x71:  // BINPUT
            try remember(Int(try byte()))
        case 0x72:  // LONG_BINPUT
            try remember(Int(try unsigned(4)))
        case 0x67:  // GET
            try recall(try decimal(try line(), what: "GET index"))
        case 0x68:  // BINGET
            try recall(Int(try byte()))
        case 0x6A:  // LONG_BINGET
            try recall(Int(try unsigned(4)))

        // Constants and numbers.
        case 0x4E: try push(.none)  // NONE
        case 0x88: try push(.bool(true))  // NEWTRUE
        case 0x89: try push(.bool(false))  // NEWFALSE
        case 0x4B: try push(.int(Int(try byte())))  // BININT1
        case 0x4D: try push(.int(Int(try unsigned(2))))  // BININT2
        case 0x4A: try push(.int(Int(Int32(truncatingIfNeeded: try unsigned(4)))))  // BININT
        case 0x49:  // INT: decimal text, or 00 / 01 for False / True
            let text = try line()
            if text.elementsEqual("00".utf8) { try push(.bool(false)) } else if text.elementsEqual("01".utf8) {
                try push(.bool(true))
            } else {
                try push(.int(try decimal(text, what: "INT")))
            }
        case 0x4C:  // LONG: decimal text with an optional L
            var text = try line()
            if text.last == UInt8(ascii: "L") { text = text.dropLast() }
            try push(.int(try decimal(text, what: "LONG")))
        case 0x8A:  // LONG1
            try pushLong(count: try unsigned(1))
        case 0x8B:  // LONG4
            let n = Int32(truncatingIfNeeded: try unsigned(4))
            guard n >= 0 else { throw fail("LONG4 has a negative length \(n)") }
            try pushLong(count: UInt64(n))
        case 0x46:  // FLOAT: text
            guard let d = Double(try lineText("FLOAT")) else { throw fail("FLOAT text is not a number") }
            try push(.float(d))
        case 0x47:  // BINFLOAT: big-endian IEEE 754
            var bits: UInt64 = 0
            for b in try take(8) { bits = bits << 8 | UInt64(b) }
            try push(.float(Double(bitPattern: bits)))

        // Text and bytes. Python 2 `str` (STRING, BINSTRING, SHORT_BINSTRING) is decoded as Latin-1, which keeps
        // every byte (numpy reads old pickles the same way).
        case 0x8C: try pushUnicode(try take(try unsigned(1)))  // SHORT_BINUNICODE
        case 0x58: try pushUnicode(try take(try unsigned(4)))  // BINUNICODE
        case 0x8D: try pushUnicode(try take(try unsigned(8)))  // BINUNICODE8
        case 0x56: try push(.string(try rawUnicodeEscape(try line())))  // UNICODE
        case 0x55: try push(.string(latin1(try take(try unsigned(1)))))  // SHORT_BINSTRING
        case 0x54:  // BINSTRING
            let n = Int32(truncatingIfNeeded: try unsigned(4))
            guard n >= 0 else { throw fail("BINSTRING has a negative length \(n)") }
            try push(.string(latin1(try take(UInt64(n)))))
        case 0x53: try push(.string(latin1(try pythonStringLiteral(try line()))))  // STRING
        case 0x43: try push(.bytes(try take(try unsigned(1))))  // SHORT_BINBYTES
        case 0x42: try push(.bytes(try take(try unsigned(4))))  // BINBYTES
        case 0x8E, 0x96: try push(.bytes(try take(try unsigned(8))))  // BINBYTES8, BYTEARRAY8
        case 0x97:  // NEXT_BUFFER
            throw fail("refers to an out-of-band buffer (NEXT_BUFFER), which a file cannot supply")
        case 0x98:  // READONLY_BUFFER: marks the buffer on top read-only; bytes here are read-only anyway.
            guard case .bytes = document.nodes[try top()] else { throw fail("READONLY_BUFFER of a non-buffer") }

        // Containers.
        case 0x29: try pushTuple([])  // EMPTY_TUPLE
        case 0x85: try pushTuple([try pop()])  // TUPLE1
        case 0x86:  // TUPLE2
            let b = try pop(), a = try pop()
            try pushTuple([a, b])
        case 0x87:  // TUPLE3
            let c = try pop(), b = try pop(), a = try pop()
            try pushTuple([a, b, c])
        case 0x74: try pushTuple(try popToMark())  // TUPLE
        case 0x5D: try push(.list(sequence([])))  // EMPTY_LIST
        case 0x6C:  // LIST
            let items = try popToMark()
            try push(.list(sequence(items)), children: items)
        case 0x7D: try pushDict([])  // EMPTY_DICT
        case 0x64:  // DICT
            let items = try popToMark()
            guard items.count % 2 == 0 else { throw fail("DICT has an odd number of items") }
            try pushDict(items)
        case 0x8F: try push(.set(sequence([])))  // EMPTY_SET
        case 0x91:  // FROZENSET
            let items = try popToMark()
            try push(.frozenSet(sequence(items)), children: items)
        case 0x61:  // APPEND
            let item = try pop()
            try append([item], to: try top(), what: "APPEND")
        case 0x65:  // APPENDS
            let items = try popToMark()
            try append(items, to: try top(), what: "APPEND")
        case 0x90:  // ADDITEMS
            let items = try popToMark()
            try append(items, to: try top(), what: "ADDITEMS")
        case 0x73:  // SETITEM
            let value = try pop(), key = try pop()
            try setItems([key, value], into: try top())
        case 0x75:  // SETITEMS
            let items = try popToMark()
            try setItems(items, into: try top())

        // Names and calls: recorded, never resolved or made.
        case 0x63:  // GLOBAL
            let module = try lineText("GLOBAL module"), name = try lineText("GLOBAL name")
            try push(.global(module: module, name: name))
        case 0x93:  // STACK_GLOBAL
            let name = try pop(), module = try pop()
            guard let m = document.value(module).string, let n = document.value(name).string else {
                throw fail("STACK_GLOBAL needs two strings, got \(document.value(module).summary) and \(document.value(name).summary)")
            }
            try push(.global(module: m, name: n))
        case 0x52:  // REDUCE
            let arguments = try pop(), callee = try pop()
            try pushRecord(.call, callee: callee, arguments: arguments)
        case 0x81:  // NEWOBJ
            let arguments = try pop(), cls = try pop()
            try pushRecord(.newObject, callee: cls, arguments: arguments)
        case 0x92:  // NEWOBJ_EX
            let keywords = try pop(), arguments = try pop(), cls = try pop()
            guard case .dict = document.nodes[keywords] else {
                throw fail("NEWOBJ_EX keywords are \(document.value(keywords).summary), not a dict")
            }
            try pushRecord(.newObject, callee: cls, arguments: arguments, keywords: keywords)
        case 0x69:  // INST: module and name as text, arguments since the mark
            let module = try lineText("INST module"), name = try lineText("INST name")
            let arguments = try popToMark()
            let cls = try make(.global(module: module, name: name))
            let tuple = try make(.tuple(sequence(arguments)), children: arguments)
            try pushRecord(.call, callee: cls, arguments: tuple)
        case 0x6F:  // OBJ: the class and its arguments since the mark
            let items = try popToMark()
            guard let cls = items.first else { throw fail("OBJ without a class") }
            let rest = Array(items.dropFirst())
            try pushRecord(.call, callee: cls, arguments: try make(.tuple(sequence(rest)), children: rest))
        case 0x62:  // BUILD
            let state = try pop()
            try build(state: state, on: try top())
        case 0x50:  // PERSID
            let id = try make(.string(try lineText("PERSID")))
            try push(.persistentID(id), children: [id])
        case 0x51:  // BINPERSID
            let id = try pop()
            try push(.persistentID(id), children: [id])
        case 0x82, 0x83, 0x84:  // EXT1, EXT2, EXT4
            let code = try unsigned(op == 0x82 ? 1 : op == 0x83 ? 2 : 4)
            throw fail("uses extension code \(code) of Python's copyreg registry, which a file cannot supply")
        default:
            throw fail("has unknown opcode 0x\(String(op, radix: 16))")
        }
    }

    mutating func pushDict(_ items: [Int]) throws {
        let entries = stride(from: 0, to: items.count, by: 2).map { (key: items[$0], value: items[$0 + 1]) }
        document.mappings.append(entries)
        try push(.dict(document.mappings.count - 1), children: items)
    }

    mutating func pushUnicode(_ utf8: ArraySlice<UInt8>) throws {
        guard let s = String(validating: utf8, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
        try push(.string(s))
    }

    /// LONG1 / LONG4: `count` bytes of little-endian two's complement.
    mutating func pushLong(count: UInt64) throws {
        var b = Array(try take(count))
        let negative = (b.last ?? 0) & 0x80 != 0
        // Drop sign-extension bytes so equal numbers have equal bytes.
        while b.count > 1, b[b.count - 1] == (negative ? 0xFF : 0), (b[b.count - 2] & 0x80 != 0) == negative { b.removeLast() }
        if b.count == 1, b[0] == 0 { b = [] }
        if b.count <= 8 {
            var v: UInt64 = negative ? ~0 : 0
            for (k, x) in b.enumerated() {
                v &= ~(0xFF << (8 * UInt64(k)))
                v |= UInt64(x) << (8 * UInt64(k))
            }
            try push(.int(Int(Int64(bitPattern: v))))
        } else {
            try push(.bigInt(b))
        }
    }

    /// A protocol-0 integer argument: optional sign and decimal digits, within Int.
    func decimal(_ text: ArraySlice<UInt8>, what: String) throws -> Int {
        guard let s = String(validating: text, as: UTF8.self), let v = Int(s) else {
            throw fail("\(what) text is not a whole number that fits in 64 bits")
        }
        return v
    }

    func latin1(_ b: ArraySlice<UInt8>) -> String {
        var s = ""
        s.unicodeScalars.append(contentsOf: b.map { Unicode.Scalar($0) })
        return s
    }

    /// STRING's argument: a Python 2 string literal in quotes, with backslash escapes.
    func pythonStringLiteral(_ text: ArraySlice<UInt8>) throws -> ArraySlice<UInt8> {
        guard text.count >= 2, let q = text.first, q == UInt8(ascii: "'") || q == UInt8(ascii: "\""), text.last == q else {
            throw fail("STRING argument is not a quoted string")
        }
        let body = text.dropFirst().dropLast()
        var out: [UInt8] = []
        out.reserveCapacity(body.count)
        var i = body.startIndex
        func hex(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x61...0x66: return c - 0x61 + 10
            case 0x41...0x46: return c - 0x41 + 10
            default: return nil
            }
        }
        while i < body.endIndex {
            let c = body[i]
            i += 1
            guard c == UInt8(ascii: "\\") else { out.append(c); continue }
            guard i < body.endIndex else { throw fail("STRING ends in a backslash") }
            let e = body[i]
            i += 1
            switch e {
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "\\"), UInt8(ascii: "'"), UInt8(ascii: "\""): out.append(e)
            case UInt8(ascii: "x"):
                guard i + 1 < body.endIndex, let h = hex(body[i]), let l = hex(body[i + 1]) else {
                    throw fail("STRING has a bad \\x escape")
                }
                out.append(h << 4 | l)
                i += 2
            case 0x30...0x37:  // up to three octal digits
                var v = Int(e - 0x30)
                var n = 1
                while n < 3, i < body.endIndex, (0x30...0x37).contains(body[i]) {
                    v = v * 8 + Int(body[i] - 0x30)
                    i += 1
                    n += 1
                }
                out.append(UInt8(truncatingIfNeeded: v))
            default:
                throw fail("STRING has an unsupported escape \\\(Unicode.Scalar(e))")
            }
        }
        return out[...]
    }

    /// UNICODE's argument: Latin-1 text where \uXXXX and \UXXXXXXXX stand for other code points.
    func rawUnicodeEscape(_ text: ArraySlice<UInt8>) throws -> String {
        var s = ""
        var i = text.startIndex
        while i < text.endIndex {
            let c = text[i]
            if c == UInt8(ascii: "\\"), i + 1 < text.endIndex, text[i + 1] == UInt8(ascii: "u") || text[i + 1] == UInt8(ascii: "U") {
                let width = text[i + 1] == UInt8(ascii: "u") ? 4 : 8
                let digits = text.dropFirst(i + 2 - text.startIndex).prefix(width)
                guard digits.count == width, let hex = String(validating: digits, as: UTF8.self),
                      let v = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(v) else {
                    throw fail("UNICODE has a bad \\\(width == 4 ? "u" : "U") escape")
                }
                s.unicodeScalars.append(scalar)
                i += 2 + width
            } else {
                s.unicodeScalars.append(Unicode.Scalar(c))
                i += 1
            }
        }
        return s
    }
}
