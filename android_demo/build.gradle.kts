// Plugin versions for every module; the app module applies them.
plugins {
    // AGP 8.13 needs Gradle 8.13 and JDK 17 (the wrapper properties pin that Gradle).
    id("com.android.application") version "8.13.2" apply false
}
