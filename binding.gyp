{
  "targets": [
    {
      "target_name": "ublkdm_native",
      "sources": [
        "native/addon.cc",
        "native/ring.cc",
        "native/memory.cc",
        "native/fileio.cc",
        "native/mapped_copy.cc",
        "native/blockdev.cc",
        "native/affinity.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_DISABLE_CPP_EXCEPTIONS", "NAPI_VERSION=8"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "cflags": ["-O2"],
      "libraries": ["-luring"]
    }
  ]
}
