# Sampling benchmark (bench/sampling_bench.cc); included from bench/CMakeLists.txt.
add_executable(sampling_bench ${CMAKE_CURRENT_LIST_DIR}/sampling_bench.cc)
target_link_libraries(sampling_bench PRIVATE nextserve_sampling nextserve_sampling_reference
                      nextserve_kernels_cpu benchmark::benchmark)
