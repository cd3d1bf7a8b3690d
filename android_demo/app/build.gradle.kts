plugins {
    id("com.android.application")
}

val ortVersion = providers.gradleProperty("mobilevlm.ortVersion").get()
val withQnn = providers.gradleProperty("mobilevlm.qnn").orNull == "true"
val qnnRuntimeVersion = providers.gradleProperty("mobilevlm.qnnRuntimeVersion").orNull.orEmpty()

android {
    namespace = "org.mobilevlm.app"
    compileSdk = 36

    defaultConfig {
        applicationId = "org.mobilevlm.app"
        // 26 (Android 8.0): java.nio.file, which the core reads the bundle with, arrives in
        // API 26; so does everything else the app uses (ExifInterface from a stream: 24).
        // NNAPI needs 27 and is deprecated from 35: the app offers it only where ONNX Runtime
        // reports it available.
        minSdk = 26
        targetSdk = 36
        versionCode = 1
        versionName = "0.1"
    }

    sourceSets {
        getByName("main") {
            // the plain-Java core, compiled into the app as it is tested on the JVM
            java.srcDir("../core/src/main/java")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    packaging {
        jniLibs {
            // extract native libraries to nativeLibraryDir: Qualcomm's HTP loader opens its
            // skel library as a file there (ADSP_LIBRARY_PATH), it cannot read inside the APK
            useLegacyPackaging = true
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false // ONNX Runtime's Java API is reached from JNI: keep it whole
            signingConfig = signingConfigs.getByName("debug") // a demo: installable as built
        }
    }
}

dependencies {
    val ort = if (withQnn) "onnxruntime-android-qnn" else "onnxruntime-android"
    implementation("com.microsoft.onnxruntime:$ort:$ortVersion")
    if (withQnn && qnnRuntimeVersion.isNotEmpty()) {
        implementation("com.qualcomm.qti:qnn-runtime:$qnnRuntimeVersion")
    }
    implementation("androidx.core:core:1.16.0") // FileProvider: where the camera writes its photo
}
