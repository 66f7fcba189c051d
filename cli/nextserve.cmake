# build/bin/nextserve: the command-line entry point (subcommands: tokenize, detokenize, plan, up, generate, chat).
# Included from cli/CMakeLists.txt; needs the tokenizer library.
if(TARGET nextserve_tokenizer OR EXISTS ${PROJECT_SOURCE_DIR}/tokenizer/CMakeLists.txt)
  add_executable(nextserve ${CMAKE_CURRENT_LIST_DIR}/nextserve_main.cc)
  target_link_libraries(nextserve PRIVATE nextserve_tokenizer nextserve_cli nextserve_plan absl::strings)
  # Serving subcommands (up, generate, chat): clients of the router through the C++ SDK.
  if(EXISTS ${PROJECT_SOURCE_DIR}/sdk/cpp/CMakeLists.txt)
    target_sources(nextserve PRIVATE ${CMAKE_CURRENT_LIST_DIR}/up.cc ${CMAKE_CURRENT_LIST_DIR}/generate.cc)
    target_link_libraries(nextserve PRIVATE nextserve_client nextserve_local_cluster nextserve_tls)
  endif()
endif()
