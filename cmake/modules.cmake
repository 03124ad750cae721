# kvsim_module(NAME DEPS...): a static library from every .cpp under lib/NAME.
# Files are globbed so that adding an algorithm file needs no CMake edit.
function(kvsim_module name)
  file(GLOB_RECURSE srcs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/lib/${name}/*.cpp)
  add_library(kvsim_${name} STATIC ${srcs})
  target_include_directories(kvsim_${name} PUBLIC ${PROJECT_SOURCE_DIR}/lib)
  target_link_libraries(kvsim_${name} PUBLIC ${ARGN} OpenMP::OpenMP_CXX)
  foreach(src ${srcs})
    if(src MATCHES "_avx512\\.cpp$")
      set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "${KVSIM_AVX512_FLAGS}")
    elseif(src MATCHES "_avx2\\.cpp$")
      set_source_files_properties(${src} PROPERTIES COMPILE_OPTIONS "${KVSIM_AVX2_FLAGS}")
    endif()
  endforeach()
endfunction()

# kvsim_test(MODULE LIBS...): one doctest executable per tests/MODULE folder, run by ctest once
# per kernel set: MODULE_scalar, MODULE_avx2, MODULE_avx512 (KVSIM_FORCE_ISA); a set the CPU
# lacks is reported as skipped (doctest_main.cpp exits 77).
function(kvsim_test name)
  file(GLOB srcs CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/${name}/*.cpp)
  if(NOT srcs)
    return()
  endif()
  add_executable(test_${name} ${PROJECT_SOURCE_DIR}/tests/doctest_main.cpp ${srcs})
  target_link_libraries(test_${name} PRIVATE ${ARGN} kvsim_testutil doctest::doctest)
  target_compile_definitions(test_${name} PRIVATE
    KVSIM_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    KVSIM_BINARY_DIR="${PROJECT_BINARY_DIR}"
    KVSIM_CLI="$<TARGET_FILE:kvsim>")
  set(env "OMP_NUM_THREADS=2" "KVSIM_CACHE_DIR=${PROJECT_BINARY_DIR}/test-tmp/nu-cache")
  if(KVSIM_SANITIZE)
    list(APPEND env "LSAN_OPTIONS=suppressions=${PROJECT_SOURCE_DIR}/tests/lsan.supp:print_suppressions=0")
  endif()
  foreach(isa scalar avx2 avx512)
    add_test(NAME ${name}_${isa} COMMAND test_${name})
    set_tests_properties(${name}_${isa} PROPERTIES ENVIRONMENT "${env};KVSIM_FORCE_ISA=${isa}" SKIP_RETURN_CODE 77)
  endforeach()
endfunction()
