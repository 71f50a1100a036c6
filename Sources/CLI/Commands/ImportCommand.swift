import TensorCore
import NN
import TVM
import Formats

/// `tvm import`: an official network pickle or training state as this project's training checkpoint.
struct ImportCommand: Command {
    let name = "import"
    let summary = "an official TVM network (.pkl) or training state (.pt) as a training checkpoint, read without running it"
    let help = """
        tvm import FILE.pkl|FILE.pt --out checkpoint.safetensors [--network ema|net|ema_target]
          Reads a file of the official TVM code without running anything in it (the pickle's code and globals are
          read as data): a network pickle as released (im256_w2.pkl) or as the training loop snapshots it, or a
          torch.save training state (training-state-*.pt). The model's configuration comes from the constructor
          arguments the file records and is checked against every tensor's shape.
          A pickle's network (--network, default ema, else the first of net, ema_target it holds) becomes the
          student, EMA target and evaluation EMA of a checkpoint at step 0; a training state becomes one whole:
          net the student, ema_target the teacher, ema the evaluation EMA, with AdamW's moments and step (with
          --network, just that network, as from a pickle). The scaled parameterization is the file's
          do_scale_param. tvm sample --checkpoint and tvm train --resume-from also read these files directly.
        """

    func defaultDevice(_ args: [String]) -> DeviceChoice { .cpu }

    func run(_ args: [String]) throws {
        let a = try Arguments(command: "import", args, options: ["out", "network"])
        try a.expectPositional(1, "one official file (FILE.pkl or FILE.pt)")
        let path = a.positional[0]
        guard let out = a.string("out") else { throw CLIError("tvm import needs --out checkpoint.safetensors", usage: true) }
        let network = a.string("network")
        if let network, !OfficialNetwork.keys.contains(network) {
            throw CLIError("--network must be \(OfficialNetwork.keys.joined(separator: ", ")), got '\(network)'", usage: true)
        }
        try checkOutputFile(out, flag: "--out")
        guard FileSystem.isRegularFile(path) else { throw CLIError("\(path): no such file") }
        let ck = try TrainingCheckpoint.importing(path: path, network: network)
        try ck.write(path: out)
        let c = ck.model
        let (total, _) = try DiT(c).parameterCount
        let networks = ck.training["network"]?.string ?? "?"
        let scaled = ck.training["scaled_param"]?.bool == true ? "on" : "off"
        Console.info("\(path): \(networks) -> \(out): DiT patch \(c.patch), hidden \(c.hidden), depth \(c.depth), \(c.heads) heads, "
            + "\(c.inputSize)x\(c.inputSize)x\(c.inChannels), \(c.numClasses) classes, \(total) parameters; scaled parameterization "
            + "\(scaled); step \(ck.step)")
    }
}
