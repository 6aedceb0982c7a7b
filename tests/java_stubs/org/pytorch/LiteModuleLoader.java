package org.pytorch; public class LiteModuleLoader { public static Module load(String path) { return null; } }
