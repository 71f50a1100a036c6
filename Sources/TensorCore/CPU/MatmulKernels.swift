// Linear layers on the CPU (LinearBackend): the matrix product's beta = 1 adds the bias, so `linearByGEMM` is the
// fused form here; the GELU is a second pass.

extension CPUBackend: LinearBackend {
    public func linear(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int, outFeatures: Int) {
        linearByGEMM(x, w, bias: bias, y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    public func linearWeightGradient(_ x: Storage, _ g: Storage, gw: Storage, gbias: Storage?, rows: Int, inFeatures: Int,
                                     outFeatures: Int) {
        linearWeightGradientByGEMM(x, g, gw: gw, gbias: gbias, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    public func linearGELU(_ x: Storage, _ w: Storage, bias: Storage?, _ y: Storage, rows: Int, inFeatures: Int,
                           outFeatures: Int) {
        linearThenGELU(x, w, bias: bias, y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }

    /// A product and a sum, as the engine sums gradients (the GEMM's own beta = 1 would round differently).
    public func linearInputGradient(_ g: Storage, _ w: Storage, plus: Storage, rows: Int, inFeatures: Int,
                                    outFeatures: Int) -> Storage? { nil }
}
