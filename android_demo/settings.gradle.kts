// The Android Studio project of the demo: one app module. The plain-Java core
// (android_demo/core, built and tested on the JVM by `make android-core` / `make test`)
// is compiled into the app as sources, so the phone runs the very classes the JUnit
// suite checks against the Python runtime.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "mobilevlm-android"
include(":app")
