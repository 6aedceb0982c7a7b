package org.pytorch; public class IValue { public static IValue from(Tensor t) { return null; } public Tensor toTensor() { return null; } }
