"""The app: building the APK (build, and apk/ without Gradle), running it on a phone over adb (device) and the native
libraries' ELF alignment (elf)."""
