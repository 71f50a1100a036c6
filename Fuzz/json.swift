// JSON: safetensors headers, and the model configuration a training checkpoint carries in its metadata.
import Formats
import NN
import TVM

func fuzz(_ bytes: [UInt8]) {
    // Readers use the default depth limit; the largest one the parser allows stresses its recursion.
    var value: JSONValue?, deep: JSONValue?
    let error = refusalMessage(FormatError.self) { value = try JSONValue.parse(bytes) }
    requireOneLine(error)
    requireOneLine(refusalMessage(FormatError.self) { deep = try JSONValue.parse(bytes, maxDepth: 1000) })
    if let value { require(deep == value, "a deeper limit changed the value") }
    if value == nil, let deep, !(error ?? "").contains("nesting deeper") {
        fatalError("only the depth limit may make the default parse fail where the deep one succeeds: \(deep)")
    }
    guard let json = deep else { return }

    for pretty in [false, true] {
        let text = json.serialized(pretty: pretty)
        let again = try! JSONValue.parse(text, maxDepth: 1000)
        require(again == json, "serialize(pretty: \(pretty))/parse round trip changed the value")
    }

    // A checkpoint's model_config: either refused with a ModelError or a model that can be built.
    guard let config = refusedAs(ModelError.self, { try DiTConfig(json: json) }) else { return }
    let model = try! DiT(config)
    require(model.parameterCount.total >= model.parameterCount.trainable, "parameter counts inconsistent")
    require(try! DiTConfig(json: config.json) == config, "model config changed on a JSON round trip")
}
