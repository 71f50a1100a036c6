import XCTest
import Foundation
import Formats

/// Every `tvm` command fed bad input from a table: wrong types, out-of-range values, empty values, missing
/// or wrong files, options of another kind of data, a checkpoint of another model size. Each must exit
/// non-zero with exactly one stderr line, "error: ..." naming the flag or file, nothing on stdout, no crash
/// trace, and leave every file already written byte for byte as it was.
final class BadInputTests: CLITestCase {
    struct Case {
        var args: [String]
        /// What the error line must name (the flag, the file or the value at fault).
        var names: String
    }

    func testEveryCommandRefusesBadInputWithOneLineAndHarmsNoFile() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try makeData(dir)
        func path(_ name: String) -> String { dir + "/" + name }

        // Files for the cases: a finished run and one of another model size, damaged and foreign checkpoints,
        // point files, and arrays that are not images or labels.
        let run = path("run"), big = path("big"), checkpoint = run + "/checkpoint.safetensors"
        var r = try self.run(["train"] + data + ["--steps", "2", "--out", run])
        XCTAssertEqual(r.status, 0, r.err)
        r = try self.run(["train"] + data + ["--hidden", "64", "--steps", "1", "--out", big])
        XCTAssertEqual(r.status, 0, r.err)
        // --bf16 is taken as tvm train takes it (on the CPU it changes nothing).
        r = try self.run(["sample", "--device", "cpu", "--checkpoint", checkpoint, "--n", "3", "--out", path("grid.png"), "--bf16"])
        XCTAssertEqual(r.status, 0, r.err)
        var bytes = try AtomicFile.read(path: checkpoint)
        bytes[bytes.count - 7] ^= 0x20
        try FileManager.default.createDirectory(atPath: path("corrupt"), withIntermediateDirectories: true)
        try AtomicFile.write(path: path("corrupt/checkpoint.safetensors"), bytes: bytes)
        try FileManager.default.createDirectory(atPath: path("foreign"), withIntermediateDirectories: true)
        try SafetensorsFile(metadata: [], tensors: [NamedArray(name: "w", shape: [2], floats: [1, 2])])
            .write(path: path("foreign/checkpoint.safetensors"))
        try AtomicFile.write(path: path("a.csv"), bytes: Array("0,0\n1,1\n".utf8))
        try AtomicFile.write(path: path("a3.csv"), bytes: Array("0,0,0\n1,1,1\n".utf8))
        try AtomicFile.write(path: path("text.txt"), bytes: Array("hello\n".utf8))
        try FileManager.default.createDirectory(atPath: path("empty"), withIntermediateDirectories: true)
        try NPYArray.write(path: path("rect.npy"), shape: [12, 8, 6], floats: [Float](repeating: 0, count: 12 * 48))
        try NPYArray.write(path: path("flat.npy"), shape: [12], floats: [Float](repeating: 0, count: 12))
        try NPYArray.write(path: path("nan.npy"), shape: [12, 8, 8], floats: [Float](repeating: .nan, count: 12 * 64))
        try NPYArray.write(path: path("short-labels.npy"), shape: [2], floats: [0, 1])
        try NPYArray.write(path: path("half-labels.npy"), shape: [12], floats: [Float](repeating: 0.5, count: 12))
        try NPYArray.write(path: path("wide-labels.npy"), shape: [12], floats: (0..<12).map { Float($0) })
        let before = try snapshot(dir)
        for file in ["run/checkpoint.safetensors", "run/metrics.jsonl", "run/samples_step2_nfe1.png", "grid.png", "a.csv"] {
            XCTAssertNotNil(before[file], "the snapshot misses \(file)")
        }

        // Each image case is a tiny, quick run but for its one fault, so a case that wrongly passes ends fast.
        let image = ["train"] + data + ["--steps", "1", "--out", path("scratch")]
        let x = path("x.npy"), y = path("y.npy")
        let imageData = ["train", "--device", "cpu", "--hidden", "32", "--depth", "1", "--heads", "2", "--steps", "1", "--out", path("scratch")]
        let toy = ["train", "--data", "moons", "--steps", "1", "--batch", "8", "--width", "8", "--depth", "1", "--eval-samples", "10",
                   "--out", path("toy")]
        let sample = ["sample", "--device", "cpu", "--checkpoint", checkpoint, "--n", "2", "--out", path("grid.png")]
        let table: [(command: String, cases: [Case])] = [
            ("tvm", [
                Case(args: ["frobnicate"], names: "'frobnicate'"),
                Case(args: ["help", "frobnicate"], names: "'frobnicate'"),
                Case(args: ["demo", "--device", "gpu"], names: "--device"),
                Case(args: ["demo", "--device"], names: "--device"),
            ]),
            ("demo", [
                Case(args: ["demo", "--steps", "0"], names: "--steps"),
                Case(args: ["demo", "--steps", "ten"], names: "--steps"),
                Case(args: ["demo", "--steps", "-5"], names: "--steps"),
                Case(args: ["demo", "--steps", "99999999999999999999"], names: "--steps"),
                Case(args: ["demo", "--steps="], names: "--steps"),
                Case(args: ["demo", "--seed", "1.5"], names: "--seed"),
                Case(args: ["demo", "--seed", "-1"], names: "--seed"),
                Case(args: ["demo", "--methods", "tvm,sit"], names: "--methods"),
                Case(args: ["demo", "--methods", ""], names: "--methods"),
                Case(args: ["demo", "--out"], names: "--out"),
                Case(args: ["demo", "--out", ""], names: "--out"),
                Case(args: ["demo", "--out", path("text.txt/sub")], names: "text.txt/sub"),
                Case(args: ["demo", "extra"], names: "positional"),
                Case(args: ["demo", "--bogus"], names: "--bogus"),
            ]),
            ("train (2-D)", [
                Case(args: ["train", "--data", "swirl"], names: "'swirl'"),
                Case(args: toy + ["--method", "gan"], names: "'gan'"),
                Case(args: toy + ["--steps", "0"], names: "--steps"),
                Case(args: toy + ["--batch", "x"], names: "--batch"),
                Case(args: toy + ["--lr", "0"], names: "--lr"),
                Case(args: toy + ["--lr", "nan"], names: "--lr"),
                Case(args: toy + ["--lr", "inf"], names: "--lr"),
                Case(args: toy + ["--width", "0"], names: "--width"),
                Case(args: toy + ["--depth", "100"], names: "--depth"),
                Case(args: toy + ["--nfe", "0"], names: "--nfe"),
                Case(args: toy + ["--nfe", "1,a"], names: "--nfe"),
                Case(args: toy + ["--nfe", "1,,2"], names: "--nfe"),
                Case(args: toy + ["--ema", "1.5"], names: "--ema"),
                Case(args: toy + ["--ema", "power:-1"], names: "--ema"),
                Case(args: toy + ["--eval-samples", "1"], names: "--eval-samples"),
                Case(args: toy + ["--time-scale", "0"], names: "--time-scale"),
                Case(args: toy + ["--method", "fm", "--time-sampler", "0,1,0,1"], names: "MU,SIGMA"),
                Case(args: toy + ["--on-fault", "explode"], names: "--on-fault"),
                Case(args: toy + ["--loss-spike", "0.5"], names: "--loss-spike"),
                Case(args: toy + ["--grad-spike", "-1"], names: "--grad-spike"),
                Case(args: toy + ["--grad-limit", "0"], names: "--grad-limit"),
                Case(args: toy + ["--fault-warmup", "-1"], names: "--fault-warmup"),
                Case(args: toy + ["--out", path("text.txt")], names: "text.txt"),
                Case(args: toy + ["--flip"], names: "--flip"),
                Case(args: toy + ["extra"], names: "positional"),
            ]),
            ("train (images)", [
                Case(args: imageData + ["--data", path("missing.npy")], names: "missing.npy"),
                Case(args: imageData + ["--data", x, "--labels", path("missing.npy")], names: "missing.npy"),
                Case(args: imageData + ["--data", x, "--labels", path("short-labels.npy")], names: "short-labels.npy"),
                Case(args: imageData + ["--data", x, "--labels", path("half-labels.npy")], names: "half-labels.npy"),
                Case(args: imageData + ["--data", x, "--labels", path("wide-labels.npy"), "--classes", "3"], names: "wide-labels.npy"),
                Case(args: imageData + ["--data", path("nan.npy"), "--labels", y], names: "nan.npy"),
                Case(args: imageData + ["--data", path("rect.npy"), "--labels", y], names: "square"),
                Case(args: imageData + ["--data", path("flat.npy"), "--labels", y], names: "flat.npy"),
                Case(args: imageData + ["--data", path("empty")], names: "empty"),
                Case(args: imageData + ["--data", "mnist"], names: "--data-dir"),
                Case(args: imageData + ["--data", "mnist", "--data-dir", path("empty")], names: "empty"),
                Case(args: imageData + ["--data", "fashion-mnist", "--labels", y], names: "--labels"),
                Case(args: image + ["--pad", "5"], names: "--pad"),
                Case(args: image + ["--data-dir", path("empty")], names: "--data-dir"),
                Case(args: image + ["--model", "Q/2"], names: "Q/2"),
                Case(args: image + ["--patch", "3"], names: "patch size 3"),
                Case(args: image + ["--patch", "0"], names: "--patch"),
                Case(args: image + ["--hidden", "30", "--heads", "5"], names: "hidden size"),
                Case(args: image + ["--cfg", "0"], names: "--cfg"),
                Case(args: image + ["--cfg-range", "3,1"], names: "--cfg-range"),
                Case(args: image + ["--cfg-range", "1,,3"], names: "--cfg-range"),
                Case(args: image + ["--cfg", "2"], names: "--cfg"),
                Case(args: image + ["--label-dropout", "2"], names: "--label-dropout"),
                Case(args: image + ["--time-budget", "-1"], names: "--time-budget"),
                Case(args: image + ["--every", "0"], names: "--every"),
                Case(args: image + ["--ema-target", "1"], names: "--ema-target"),
                Case(args: image + ["--ema", "power:7,power:7.0"], names: "--ema lists power:7 twice"),
                Case(args: image + ["--ema", "power:7,"], names: "--ema"),
                Case(args: image + ["--method", "sit"], names: "--method"),
                Case(args: image + ["--method", "meanflow"], names: "--cfg-range"),
                Case(args: imageData + ["--data", x, "--labels", y, "--method", "meanflow", "--cfg-kappa", "1"], names: "--cfg-kappa"),
                Case(args: imageData + ["--data", x, "--labels", y, "--method", "meanflow", "--cfg-interval", "0.6,0.2"], names: "--cfg-interval"),
                Case(args: imageData + ["--data", x, "--labels", y, "--method", "meanflow", "--cfg-interval", "0,nan"], names: "--cfg-interval"),
                Case(args: image + ["--method", "imf", "--cfg-kappa", "0.5"], names: "--cfg-kappa"),
                Case(args: image + ["--cfg-interval", "0,1"], names: "--cfg-interval"),
                Case(args: image + ["--sample-cfg-interval", "0,1"], names: "--sample-cfg-interval"),
                Case(args: image + ["--method", "imf", "--sample-cfg-interval", "0.7,0.2"], names: "--sample-cfg-interval"),
                Case(args: image + ["--time-sampler", "-0.4,1"], names: "MU_S,SIGMA_S,MU_G,SIGMA_G"),
                Case(args: image + ["--time-sampler", "-0.4,0,-0.8,1"], names: "--time-sampler"),
                Case(args: image + ["--time-sampler", "-0.4,1,,1"], names: "--time-sampler"),
                Case(args: image + ["--method", "imf", "--time-sampler", "0,1,1.5"], names: "EQUAL"),
                Case(args: image + ["--method", "fm", "--time-sampler", "0,nan"], names: "--time-sampler"),
                Case(args: image + ["--classes", "0"], names: "--classes"),
                Case(args: image + ["--sample-cfg", "-1"], names: "--sample-cfg"),
                Case(args: image + ["--flip=yes"], names: "--flip"),
                Case(args: image + ["--on-fault", "maybe"], names: "--on-fault"),
                Case(args: image + ["--out", ""], names: "--out"),
                Case(args: image + ["--out", run], names: "--resume"),
                Case(args: image + ["--resume", "--out", path("nowhere")], names: "nowhere/checkpoint.safetensors"),
                Case(args: image + ["--resume", "--out", big], names: "hidden 64 vs 32"),
                Case(args: image + ["--resume", "--out", run, "--hidden", "64"], names: "hidden 32 vs 64"),
                Case(args: image + ["--resume", "--out", run, "--depth", "2"], names: "depth 1 vs 2"),
                Case(args: image + ["--resume", "--out", path("corrupt")], names: "CRC"),
                Case(args: image + ["--resume", "--out", path("foreign")], names: "not a TerminalVelocity training checkpoint"),
            ]),
            ("sample", [
                Case(args: ["sample"], names: "--checkpoint"),
                Case(args: ["sample", "--device", "cpu", "--checkpoint", path("missing.safetensors")], names: "missing.safetensors"),
                Case(args: ["sample", "--device", "cpu", "--checkpoint", path("text.txt")], names: "text.txt"),
                Case(args: ["sample", "--device", "cpu", "--checkpoint", path("empty")], names: "empty"),
                Case(args: ["sample", "--device", "cpu", "--checkpoint", x], names: "x.npy"),
                Case(args: ["sample", "--device", "cpu", "--checkpoint", path("corrupt/checkpoint.safetensors")], names: "CRC"),
                Case(args: ["sample", "--device", "cpu", "--checkpoint", path("foreign/checkpoint.safetensors")], names: "foreign"),
                Case(args: sample + ["--n", "0"], names: "--n"),
                Case(args: sample + ["--nfe", "0"], names: "--nfe"),
                Case(args: sample + ["--cfg", "nan"], names: "--cfg"),
                Case(args: sample + ["--classes", "7"], names: "--classes"),
                Case(args: sample + ["--classes", "0,,2"], names: "--classes"),
                Case(args: sample + ["--classes", "a,b"], names: "--classes"),
                Case(args: sample + ["--weights", "best"], names: "--weights"),
                Case(args: sample + ["--weights", "ema:wide"], names: "--weights"),
                Case(args: sample + ["--weights", "ema:power:9"], names: "no extra EMA \"power:9\""),
                Case(args: sample + ["--columns", "0"], names: "--columns"),
                Case(args: sample + ["--seed", "-4"], names: "--seed"),
                Case(args: sample + ["--out", path("empty")], names: "empty"),
                Case(args: sample + ["--npy", path("nodir/s.npy")], names: "nodir/s.npy"),
                Case(args: sample + ["--folder", path("text.txt")], names: "text.txt"),
                Case(args: sample + ["--cfg-interval", "0.4,0.6"], names: "--cfg-interval"),
                Case(args: sample + ["extra"], names: "positional"),
            ]),
            ("w2", [
                Case(args: ["w2"], names: "two point files"),
                Case(args: ["w2", path("a.csv")], names: "two point files"),
                Case(args: ["w2", path("a.csv"), path("a.csv"), path("a.csv")], names: "two point files"),
                Case(args: ["w2", path("a.csv"), path("missing.csv")], names: "missing.csv"),
                Case(args: ["w2", path("a.csv"), path("a3.csv")], names: "dimensions"),
                Case(args: ["w2", path("a.csv"), path("empty")], names: "empty"),
                Case(args: ["w2", path("a.csv"), x], names: "x.npy"),
                Case(args: ["w2", path("a.csv"), path("text.txt")], names: "text.txt"),
                Case(args: ["w2", path("a.csv"), checkpoint], names: "checkpoint.safetensors"),
                Case(args: ["w2", path("a.csv"), path("a.csv"), "--bogus"], names: "--bogus"),
            ]),
            ("bench", [
                Case(args: ["bench"], names: "toy, train, sample, attention or vae"),
                Case(args: ["bench", "vae", "--device", "cpu", "--batch", "0"], names: "--batch"),
                Case(args: ["bench", "frob"], names: "'frob'"),
                Case(args: ["bench", "toy", "--batch", "0"], names: "--batch"),
                Case(args: ["bench", "toy", "--method", "gan"], names: "'gan'"),
                Case(args: ["bench", "toy", "--steps", "x"], names: "--steps"),
                Case(args: ["bench", "toy", "extra"], names: "positional"),
                Case(args: ["bench", "train", "--device", "cpu", "--model", "Q/2"], names: "Q/2"),
                Case(args: ["bench", "train", "--device", "cpu", "--res", "0"], names: "--res"),
                Case(args: ["bench", "train", "--device", "cpu", "--res", "7"], names: "input size 7"),
                Case(args: ["bench", "train", "--device", "cpu", "--channels", "0"], names: "--channels"),
                Case(args: ["bench", "train", "--device", "cpu", "--cfg", "0.5"], names: "--cfg"),
                Case(args: ["bench", "sample", "--device", "cpu", "--nfe", "0"], names: "--nfe"),
                Case(args: ["bench", "attention", "--device", "cpu", "--b", "0"], names: "--b"),
                Case(args: ["bench", "attention", "--device", "cpu", "--s", "100000000"], names: "--s"),
                Case(args: ["bench", "attention", "--device", "cpu", "--d", "x"], names: "--d"),
            ]),
            ("prepare", [
                Case(args: ["prepare"], names: "one source"),
                Case(args: ["prepare", path("empty"), "--out", path("p.zip")], names: "empty"),
                Case(args: ["prepare", path("missing"), "--out", path("p.zip")], names: "missing"),
                Case(args: ["prepare", path("empty"), "--out", path("p.tar")], names: "--out"),
                Case(args: ["prepare", path("empty"), "--out", path("p.zip"), "--size", "0"], names: "--size"),
                Case(args: ["prepare", path("empty"), "--out", path("p.zip"), "--on-bad-image", "ignore"], names: "--on-bad-image"),
                Case(args: ["prepare", path("empty"), "--out", path("p.zip"), "--bf16"], names: "--bf16"),
                Case(args: ["prepare", path("empty"), "--out", path("p.zip"), "--vae", path("empty")], names: "empty"),
                Case(args: ["prepare", "--stats", x, "--bf16"], names: "--bf16"),
                Case(args: ["prepare", "--stats", x], names: "x.npy"),
            ]),
            ("import", [
                Case(args: ["import"], names: "one official file"),
                Case(args: ["import", path("text.txt"), "--out", path("imported.safetensors")], names: "text.txt"),
                Case(args: ["import", checkpoint, "--out", path("imported.safetensors")], names: "checkpoint.safetensors"),
                Case(args: ["import", path("missing.pkl"), "--out", path("imported.safetensors")], names: "missing.pkl"),
            ]),
            ("reference-check", [
                Case(args: ["reference-check"], names: "one reference file"),
                Case(args: ["reference-check", path("missing.safetensors")], names: "missing.safetensors"),
                Case(args: ["reference-check", path("text.txt")], names: "text.txt"),
                Case(args: ["reference-check", checkpoint], names: "checkpoint.safetensors"),
                Case(args: ["reference-check", path("empty")], names: "empty"),
                Case(args: ["reference-check", checkpoint, "--tolerance", "2"], names: "--tolerance"),
                Case(args: ["reference-check", path("a.csv"), path("a3.csv")], names: "one reference file"),
            ]),
        ]

        var counts: [String] = []
        for (command, cases) in table {
            for c in cases {
                let r = try self.run(c.args)
                let shown = c.args.map { $0.replacingOccurrences(of: dir + "/", with: "") }.joined(separator: " ")
                // 1 for a failure, 2 for a usage error; 0 is a wrong success and 128+ a crash.
                XCTAssertTrue([1, 2].contains(r.status), "tvm \(shown) exited with \(r.status)")
                let lines = r.err.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
                XCTAssertEqual(lines.count, 1, "tvm \(shown): stderr \(r.err)")
                XCTAssertTrue(r.err.hasPrefix("error: "), "tvm \(shown): \(r.err)")
                XCTAssertTrue(r.err.contains(c.names), "tvm \(shown): \(r.err) should name \(c.names)")
                XCTAssertEqual(r.out, "", "tvm \(shown) printed a result")
                for crash in ["Fatal error", "Stack dump", "backtrace", "Illegal instruction"] {
                    XCTAssertFalse(r.err.contains(crash), "tvm \(shown): \(r.err)")
                }
            }
            counts.append("\(command) \(cases.count)")
        }

        let after = try snapshot(dir)
        for (file, content) in before {
            XCTAssertEqual(after[file], content, "\(file) changed")
        }
        XCTAssertEqual(after.keys.filter { $0.contains(".tmp-") }, [], "temporary files left behind")
        print("bad input: \(table.map(\.cases.count).reduce(0, +)) invocations (\(counts.joined(separator: ", ")))")
    }

    /// Every regular file under `dir` and its bytes.
    func snapshot(_ dir: String) throws -> [String: [UInt8]] {
        var files: [String: [UInt8]] = [:]
        guard let walker = FileManager.default.enumerator(atPath: dir) else { return files }
        for case let name as String in walker {
            var isDirectory: ObjCBool = false
            let full = dir + "/" + name
            if FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory), !isDirectory.boolValue {
                files[name] = try AtomicFile.read(path: full)
            }
        }
        return files
    }
}
