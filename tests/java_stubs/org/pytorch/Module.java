package org.pytorch; public class Module { public IValue forward(IValue... inputs) { return null; } public void destroy() {} }
