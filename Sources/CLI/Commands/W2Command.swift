import Eval
import Formats

/// `tvm w2 A B`: the exact 2-Wasserstein distance between two point files.
struct W2Command: Command {
    let name = "w2"
    let summary = "exact 2-Wasserstein distance between two point files (CSV or NPY)"
    let help = """
        tvm w2 A B
          Exact 2-Wasserstein distance between two equal-size point sets (CSV, one point per line, or NPY [n, d]).
        """

    func defaultDevice(_ args: [String]) -> DeviceChoice { .cpu }

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "w2", args, options: [])
        try a.expectPositional(2, "two point files")
        let (pa, da) = try PointFile.read(path: a.positional[0])
        let (pb, db) = try PointFile.read(path: a.positional[1])
        guard da == db else { throw CLIError("the point files have different dimensions (\(da) and \(db))") }
        guard pa.count == pb.count else {
            throw CLIError("the point files have different sizes (\(pa.count / da) and \(pb.count / db) points); exact W2 here needs equal sizes")
        }
        do { Console.out(fmt(try Wasserstein.w2(pa, pb, dim: da), 6)) } catch { throw CLIError("\(error)") }
    }
}
