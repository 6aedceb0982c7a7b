package org.pytorch; public class LitePyTorchAndroid { public static void setNumThreads(int n) {} }
