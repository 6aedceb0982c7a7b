package org.pytorch.executorch; public class EValue { public static EValue from(Tensor t) { return null; } public Tensor toTensor() { return null; } }
