#include "comm/mpi_session.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "comm/mpi_communicator.h"

namespace nextserve::comm {
namespace {

bool LaunchedByMpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MpiSession>> MpiSession::Start() {
  std::unique_ptr<MpiSession> s(new MpiSession());
  const char* force = std::getenv("NEXTSERVE_MPI");
  const std::string_view mode = force != nullptr ? force : "";
  if (mode == "0" || (mode != "1" && !LaunchedByMpirun())) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    s->host_ = host;
    return s;
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    if (int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
        rc != MPI_SUCCESS) {
      return absl::UnavailableError(absl::StrCat("mpi: MPI_Init_thread failed (", rc, ")"));
    }
    s->owns_mpi_ = true;
    if (provided < MPI_THREAD_SERIALIZED) {
      return absl::UnavailableError(
          absl::StrCat("mpi: this MPI gives thread level ", provided, ", need SERIALIZED or more"));
    }
  }
  s->uses_mpi_ = true;
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &s->rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &s->size_);
  char host[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(host, &len);
  s->host_.assign(host, len);
  // Ranks on this host: mpirun says so; otherwise ask MPI (the singleton case).
  const char* lr = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  const char* ls = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (lr == nullptr || ls == nullptr || !absl::SimpleAtoi(lr, &s->local_rank_) ||
      !absl::SimpleAtoi(ls, &s->local_size_)) {
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS) {
      return absl::UnavailableError("mpi: MPI_Comm_split_type failed");
    }
    MPI_Comm_rank(node, &s->local_rank_);
    MPI_Comm_size(node, &s->local_size_);
    MPI_Comm_free(&node);
  }
  return s;
}

MpiSession::~MpiSession() {
  if (!owns_mpi_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (AnyMpiCommunicatorFailed()) {
    // MPI_Finalize would wait for the lost peer; mpirun ends the job once this process exits.
    std::fprintf(stderr, "nextserve: rank %d: a collective failed; not calling MPI_Finalize\n",
                 rank_);
    std::fflush(stderr);
    return;
  }
  MPI_Finalize();
}

absl::StatusOr<std::unique_ptr<Communicator>> MpiSession::WorldCommunicator(
    std::chrono::milliseconds timeout) const {
  if (!uses_mpi_) {
    std::unique_ptr<Communicator> c = MakeSingleProcessCommunicator();
    c->set_timeout(timeout);
    return c;
  }
  return MakeMpiCommunicator(MPI_COMM_WORLD, timeout);
}

}  // namespace nextserve::comm
