package android.os; public class Bundle { public Object get(String key) { return null; } }
