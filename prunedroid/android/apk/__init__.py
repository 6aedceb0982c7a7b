"""Building the demo app's APK without Gradle: what app/build.gradle declares (gradle_file), the runtime libraries
from Maven (maven), the archive with its alignment (archive) and the build itself (direct), each step done by the
Android SDK's own tools or their published equivalents (aapt2, javac, D8, apksigner)."""
