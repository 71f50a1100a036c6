/// A failure on one rank of a data-parallel run, led by the rank ("rank 1: ..."): the ranks' output is merged
/// on one terminal, and the line must say which process failed.
public struct RankFailure: Error, CustomStringConvertible {
    public let rank: Int
    public let reason: String
    public var description: String { "rank \(rank): \(reason)" }
}

/// Runs `body` on rank `rank`, whatever it throws becoming a `RankFailure` of that rank.
public func onRank<T>(_ rank: Int, _ body: () throws -> T) throws -> T {
    do { return try body() } catch { throw RankFailure(rank: rank, reason: "\(error)") }
}
