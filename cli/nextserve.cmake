# build/bin/nextserve: the command-line entry point (subcommands: tokenize, detokenize).
# Included from cli/CMakeLists.txt; needs the tokenizer library.
if(TARGET nextserve_tokenizer OR EXISTS ${PROJECT_SOURCE_DIR}/tokenizer/CMakeLists.txt)
  add_executable(nextserve ${CMAKE_CURRENT_LIST_DIR}/nextserve_main.cc)
  target_link_libraries(nextserve PRIVATE nextserve_tokenizer nextserve_cli absl::strings)
endif()
