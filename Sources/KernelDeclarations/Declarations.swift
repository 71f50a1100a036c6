/// The kernels a `.cu` file exports, read from its declarations:
///
///     TVM_KERNEL(name, (threads[, minBlocks]), (parameters)) { body }        one kernel per element type
///     TVM_KERNEL_F32(name, (threads[, minBlocks]), (parameters)) { body }    one float32 kernel, no suffix
///
///     //! kernel unary(op: UnaryOp)                                          a kernel template: its axes,
///     #define UNARY(op) TVM_KERNEL(unary_##op, (256), (parameters)) { ... }  then the macro that makes one
///     UNARY(neg) UNARY(exp)                                                   instance per call
///
/// An axis is a macro parameter whose value each instance records for the Swift side (`Int` for literals,
/// `Bool` for true / false, otherwise the named Swift enum, whose case the value names). Every instance of a
/// template has the same parameter list, so one Swift launch method serves them all.
public struct KernelFile: Equatable {
    public var family: String
    /// true: compiled once per element type (TVM_KERNEL, names get _f32 / _f64); false: once, float32 (TVM_KERNEL_F32).
    public var perElementType: Bool
    public var kernels: [KernelDeclaration]
    /// Headers named by `#include "..."`, as written.
    public var includes: [String]
}

/// One launch signature and the exported kernels that have it.
public struct KernelDeclaration: Equatable {
    /// The template's name, or the single kernel's.
    public var name: String
    public var parameters: [KernelParameter]
    public var axes: [KernelAxis]
    public var instances: [KernelInstance]
    /// Whether this is a template (instances looked up by axes) rather than one kernel.
    public var isTemplate: Bool
    public var line: Int
}

public struct KernelParameter: Equatable {
    public var name: String
    /// The C type as written, whitespace normalised (`const scalar_t*`).
    public var cType: String
}

public struct KernelAxis: Equatable {
    public var name: String
    public var swiftType: String
}

public struct KernelInstance: Equatable {
    /// The exported name without the element type's suffix.
    public var name: String
    public var threads: Int
    public var minBlocks: Int?
    /// One value per axis, as written (a literal or an enum case name).
    public var axisValues: [String]
    public var line: Int
}

public enum KernelParser {
    static let kernelMacros = ["TVM_KERNEL", "TVM_KERNEL_F32"]

    public static func parse(_ source: String, file: String, family: String) throws -> KernelFile {
        func fail(_ line: Int, _ message: String) -> DeclarationError { DeclarationError(file: file, line: line, message: message) }
        var result = KernelFile(family: family, perElementType: false, kernels: [], includes: [])
        var kinds = Set<String>()
        var templates: [String: Int] = [:]  // macro name -> index in result.kernels
        var pendingAxes: (line: Int, name: String, axes: [KernelAxis])?
        // Per template macro: its parameters and the name and bounds expressions its instances evaluate.
        var macroBodies: [String: (params: [String], name: String, bounds: String)] = [:]

        /// `MACRO(name, (bounds), (params))` at `start` (after the parenthesis): name expression, bounds, parameters.
        func kernelCall(_ text: String, _ start: String.Index, _ line: Int) throws -> (name: String, bounds: String, params: String) {
            guard let (args, _) = Scanner.arguments(in: text, from: start), args.count == 3 else {
                throw fail(line, "TVM_KERNEL takes (name, (threads[, minBlocks]), (parameters))")
            }
            return (args[0], args[1], args[2])
        }

        func instance(name: String, bounds: String, line: Int, values: [String]) throws -> KernelInstance {
            guard Scanner.isIdentifier(name) else { throw fail(line, "kernel name '\(name)' is not an identifier") }
            guard bounds.hasPrefix("(") && bounds.hasSuffix(")") else {
                throw fail(line, "\(name): launch bounds '\(bounds)' must be (threads) or (threads, minBlocks)")
            }
            let numbers = bounds.dropFirst().dropLast().split(separator: ",").map { Int(Scanner.trim($0)) }
            guard (1...2).contains(numbers.count), numbers.allSatisfy({ $0 != nil }) else {
                throw fail(line, "\(name): launch bounds '\(bounds)' must be (threads) or (threads, minBlocks), in numbers")
            }
            return KernelInstance(name: name, threads: numbers[0]!, minBlocks: numbers.count > 1 ? numbers[1] : nil,
                                  axisValues: values, line: line)
        }

        for line in Scanner.logicalLines(source) {
            let text = line.text
            let trimmed = Scanner.trim(text)
            if trimmed.hasPrefix("//!") {
                let body = Scanner.trim(trimmed.dropFirst(3))
                guard body.hasPrefix("kernel "), let open = body.firstIndex(of: "("), body.hasSuffix(")") else {
                    throw fail(line.number, "a //! line declares a kernel template: //! kernel name(axis: Type, ...)")
                }
                let name = Scanner.trim(body[body.index(body.startIndex, offsetBy: 7)..<open])
                guard Scanner.isIdentifier(name) else { throw fail(line.number, "template name '\(name)' is not an identifier") }
                var axes: [KernelAxis] = []
                for part in body[body.index(after: open)..<body.index(before: body.endIndex)].split(separator: ",") {
                    let pair = part.split(separator: ":").map(Scanner.trim)
                    guard pair.count == 2, Scanner.isIdentifier(pair[0]), Scanner.isIdentifier(pair[1]) else {
                        throw fail(line.number, "axis '\(Scanner.trim(part))' of \(name) is not 'name: SwiftType'")
                    }
                    axes.append(KernelAxis(name: pair[0], swiftType: pair[1]))
                }
                pendingAxes = (line.number, name, axes)
                continue
            }
            if trimmed.hasPrefix("#include") {
                let rest = Scanner.trim(trimmed.dropFirst(8))
                if rest.hasPrefix("\"") && rest.hasSuffix("\"") && rest.count > 2 {
                    result.includes.append(String(rest.dropFirst().dropLast()))
                }
                continue
            }
            if trimmed.hasPrefix("#define") {
                let uses = kernelMacros.flatMap { m in Scanner.calls(of: m, in: text).map { (m, $0) } }
                guard let pending = pendingAxes else {
                    if !uses.isEmpty { throw fail(line.number, "a macro that declares kernels needs a '//! kernel name(axes)' line above it") }
                    continue
                }
                pendingAxes = nil
                let head = Scanner.trim(trimmed.dropFirst(7))
                guard let open = head.firstIndex(of: "("), let (macroParams, _) = Scanner.arguments(in: head, from: head.index(after: open)),
                      uses.count == 1 else {
                    throw fail(line.number, "\(pending.name): expected '#define MACRO(parameters) TVM_KERNEL(...)' after the //! kernel line")
                }
                let macro = String(head[..<open])
                for axis in pending.axes where !macroParams.contains(axis.name) {
                    throw fail(pending.line, "\(pending.name): axis \(axis.name) is not a parameter of \(macro)")
                }
                let (nameExpr, bounds, params) = try kernelCall(text, uses[0].1, line.number)
                kinds.insert(uses[0].0)
                templates[macro] = result.kernels.count
                let declaration = KernelDeclaration(name: pending.name, parameters: try parameters(params, line.number, fail),
                                                    axes: pending.axes, instances: [], isTemplate: true, line: line.number)
                macroBodies[macro] = (macroParams, nameExpr, bounds)
                result.kernels.append(declaration)
                continue
            }
            if let pending = pendingAxes {
                throw fail(pending.line, "\(pending.name): the //! kernel line must be followed by the #define that makes its instances")
            }
            for m in kernelMacros {
                for start in Scanner.calls(of: m, in: text) {
                    let (name, bounds, params) = try kernelCall(text, start, line.number)
                    kinds.insert(m)
                    let one = try instance(name: name, bounds: bounds, line: line.number, values: [])
                    result.kernels.append(KernelDeclaration(name: name, parameters: try parameters(params, line.number, fail), axes: [],
                                                            instances: [one], isTemplate: false, line: line.number))
                }
            }
            for (macro, index) in templates {
                guard let (macroParams, nameExpr, bounds) = macroBodies[macro] else { continue }
                for start in Scanner.calls(of: macro, in: text) {
                    guard let (args, _) = Scanner.arguments(in: text, from: start), args.count == macroParams.count else {
                        throw fail(line.number, "\(macro) takes \(macroParams.count) arguments (\(macroParams.joined(separator: ", ")))")
                    }
                    let values = Dictionary(uniqueKeysWithValues: zip(macroParams, args))
                    let declaration = result.kernels[index]
                    let axisValues = declaration.axes.map { values[$0.name]! }
                    for (axis, value) in zip(declaration.axes, axisValues) {
                        try checkAxisValue(value, axis, line.number, fail)
                    }
                    let one = try instance(name: Scanner.substitute(nameExpr, values), bounds: Scanner.substitute(bounds, values),
                                           line: line.number, values: axisValues)
                    result.kernels[index].instances.append(one)
                }
            }
        }
        if let pending = pendingAxes { throw fail(pending.line, "\(pending.name): no #define follows the //! kernel line") }
        guard kinds.count <= 1 else {
            throw fail(1, "a file declares either per-element-type kernels (TVM_KERNEL) or float32 ones (TVM_KERNEL_F32), not both")
        }
        result.perElementType = kinds.first != "TVM_KERNEL_F32"
        var seen: [String: Int] = [:]
        for k in result.kernels {
            if k.isTemplate && k.instances.isEmpty { throw fail(k.line, "template \(k.name) has no instances") }
            for i in k.instances {
                if let first = seen[i.name] { throw fail(i.line, "kernel \(i.name) is declared twice (first on line \(first))") }
                seen[i.name] = i.line
            }
        }
        var names: [String: Int] = [:]
        for k in result.kernels {
            if let first = names[k.name] { throw fail(k.line, "\(k.name) is declared twice (first on line \(first))") }
            names[k.name] = k.line
        }
        return result
    }

    static func checkAxisValue(_ value: String, _ axis: KernelAxis, _ line: Int,
                               _ fail: (Int, String) -> DeclarationError) throws {
        switch axis.swiftType {
        case "Int": if Int(value) == nil { throw fail(line, "axis \(axis.name): '\(value)' is not an integer") }
        case "Bool": if value != "true" && value != "false" { throw fail(line, "axis \(axis.name): '\(value)' is not true or false") }
        default: if !Scanner.isIdentifier(value) { throw fail(line, "axis \(axis.name): '\(value)' does not name a \(axis.swiftType) case") }
        }
    }

    /// `(const scalar_t* x, i64 n)` to its parameters; every type must be one the Swift side can pack.
    static func parameters(_ list: String, _ line: Int, _ fail: (Int, String) -> DeclarationError) throws -> [KernelParameter] {
        guard list.hasPrefix("(") && list.hasSuffix(")") else {
            throw fail(line, "the parameter list '\(list)' must be in parentheses")
        }
        let inner = Scanner.trim(list.dropFirst().dropLast())
        guard !inner.isEmpty else { return [] }
        return try inner.split(separator: ",").map { part in
            var tokens = part.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let last = tokens.popLast() else { throw fail(line, "an empty kernel parameter") }
            var name = last
            while name.hasPrefix("*") { tokens.append("*"); name.removeFirst() }
            let type = tokens.joined(separator: " ").replacing(" *", with: "*")
            guard Scanner.isIdentifier(name), !type.isEmpty else { throw fail(line, "kernel parameter '\(Scanner.trim(part))' is not 'type name'") }
            guard SwiftArgument(cType: type) != nil else {
                throw fail(line, "kernel parameter \(name): no Swift packing for C type '\(type)' (see SwiftArgument)")
            }
            return KernelParameter(name: name, cType: type)
        }
    }
}
