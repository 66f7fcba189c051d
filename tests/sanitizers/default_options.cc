// Linked into every executable of a NEXTSERVE_SANITIZE build (see the top CMakeLists.txt).
// OpenMPI does not free its component state at MPI_Finalize, and its components are dlclose()d by
// exit, so LeakSanitizer can match those leaks to scripts/lsan-suppressions.txt only through the
// OpenMPI libraries further up the allocation stack. The default frame-pointer unwinder stops
// inside them (Debian builds them without frame pointers), so processes started by mpirun use the
// slower DWARF unwinder for malloc stacks; all others keep the fast one.
#include <cstdlib>

extern "C" __attribute__((visibility("default"), used)) const char* __asan_default_options() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr
             ? "fast_unwind_on_malloc=0:malloc_context_size=20"
             : "";
}
