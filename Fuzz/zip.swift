// ZIP archives: the official dataset format, torch.save files and numpy's .npz arrive in this format.
@testable import Formats

func fuzz(_ bytes: [UInt8]) {
    let path = scratchFile(bytes)
    var archive: ZIPArchive?
    requireOneLine(refusalMessage(FormatError.self) { archive = try ZIPArchive(path: path) })
    guard let archive else { return }
    var readable: [(String, [UInt8])] = []
    for entry in archive.entries {
        require(entry.headerOffset + entry.compressedSize <= bytes.count, "entry \(entry.name) claims bytes past the file")
        var data: [UInt8]?
        requireOneLine(refusalMessage(FormatError.self) { data = try archive.read(entry) })
        if let data {
            require(data.count == entry.size, "entry \(entry.name): \(data.count) bytes read, \(entry.size) claimed")
            readable.append((entry.name, data))
        }
    }
    // What was read can be written again and reads back the same.
    let copy = path + ".copy"
    let w = try! ZIPWriter(path: copy)
    for (name, data) in readable { try! w.add(name: name, bytes: data) }
    try! w.finish()
    let again = try! ZIPArchive(path: copy)
    require(again.entries.map(\.name) == readable.map(\.0), "names changed in the round trip")
    for (name, data) in readable { require(try! again.read(named: name) == data, "entry \(name) changed in the round trip") }
}
