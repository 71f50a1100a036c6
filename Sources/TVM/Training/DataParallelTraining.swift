import TensorCore
import NN
import Data
import Distributed

/// Errors of data-parallel training that are the run's, not the network's: replicas that drifted apart.
public struct ReplicaError: Error, CustomStringConvertible {
    public let description: String
}

/// A 64-bit FNV-1a hash of the float bit patterns of every value of `set`, in name order: equal weights give
/// equal hashes on any rank and any device, bit for bit.
public func parameterHash(_ set: ParameterSet) -> UInt64 {
    var h: UInt64 = 0xCBF2_9CE4_8422_2325
    for t in set.all {
        for v in t.floats { h = (h ^ UInt64(v.bitPattern)) &* 0x0000_0100_0000_01B3 }
    }
    return h
}

extension Trainer {
    /// Makes this rank's state rank 0's: student, teacher, evaluation EMAs, Adam moments (broadcast through the
    /// communicator), the step counts, the random stream and `sampler`. Called once at the start, after rank 0
    /// has initialised or resumed, so that only rank 0 needs to read a checkpoint.
    public func synchronize(sampler: inout BatchSampler, over comm: Communicator) throws {
        let sets = [student, teacher, ema, optimizer.m, optimizer.v] + extraEMAs
        let received = try sets.map { set in ParameterSet(Array(zip(set.names, try comm.broadcast(set.all)))) }
        let text = "\(step) \(optimizer.step) \(rng.seed) \(rng.offset) \(sampler.state.text)"
        let fields = String(decoding: try comm.broadcastBytes(Array(text.utf8)), as: UTF8.self).split(separator: " ", maxSplits: 4)
        guard comm.rank != 0 else { return }
        guard fields.count == 5, let step = Int(fields[0]), let optimizerStep = Int(fields[1]),
              let seed = UInt64(fields[2]), let offset = UInt64(fields[3]) else {
            throw ReplicaError(description: "rank \(comm.rank): rank 0 sent a malformed training state")
        }
        do {
            sampler = try BatchSampler(count: sampler.count, state: try BatchSampler.State(text: String(fields[4])))
        } catch let e as DataError {
            throw ReplicaError(description: "rank \(comm.rank): rank 0's sampler state: \(e.message)")
        }
        restore(step: step, rng: RandomGenerator(seed: seed, offset: offset), student: received[0], teacher: received[1],
                ema: received[2], extraEMAs: Array(received[5...]), optimizerStep: optimizerStep, m: received[3], v: received[4])
    }

    /// Checks that every rank holds the same training state: hashes of the student, teacher, evaluation EMAs and
    /// Adam moments, the step, the random stream and the sampler position. Throws a `ReplicaError` naming the
    /// first part that differs and the ranks; returns a one-line summary otherwise.
    public func checkReplicas(sampler: BatchSampler, over comm: Communicator) throws -> String {
        let parts: [(String, UInt64)] = [
            ("student", parameterHash(student)), ("teacher", parameterHash(teacher)), ("ema", parameterHash(ema)),
            ("adam_m", parameterHash(optimizer.m)), ("adam_v", parameterHash(optimizer.v)),
            ("step", UInt64(step)), ("rng_offset", rng.offset),
            ("sampler_epoch", UInt64(sampler.state.epoch)), ("sampler_position", UInt64(sampler.state.position)),
        ] + zip(config.extraEMAs, extraEMAs).map { ("ema_\($0.description)", parameterHash($1)) }
        // Two exact halves per value: doubles carry 32-bit integers without rounding.
        let mine = parts.flatMap { [Double($0.1 >> 32), Double($0.1 & 0xFFFF_FFFF)] }
        let all = try comm.allGather(mine).map { v in (0..<parts.count).map { UInt64(v[2 * $0]) << 32 | UInt64(v[2 * $0 + 1]) } }
        for (i, (name, _)) in parts.enumerated() {
            if let r = all.indices.first(where: { all[$0][i] != all[0][i] }) {
                throw ReplicaError(description: "the ranks have drifted apart at step \(step): \(name) differs between rank 0 "
                                   + "(\(hex(all[0][i]))) and rank \(r) (\(hex(all[r][i])))")
            }
        }
        return "replicas identical on \(comm.worldSize) ranks at step \(step): student \(hex(parts[0].1)), "
            + "teacher \(hex(parts[1].1)), ema \(hex(parts[2].1))"
    }
}

private func hex(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 16 - s.count)) + s
}
