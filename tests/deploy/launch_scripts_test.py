#!/usr/bin/env python3
"""The command lines that the launch scripts build, with stand-ins for mpirun and nextserve-rank.

helm/nextserve/files/launch.sh (inside rank pods): one mpirun application context per rank, each
pinned to its pod, ports that put every pod's ranks on PORT .. PORT + ranks_per_pod - 1, the pods'
names under a LeaderWorkerSet, waiting for the other pods' sshd. deploy/launch-multihost.sh: the
ranks' host:port addresses given to the router under --map-by slot, and its errors on bad input.
The real processes are started by launch_multihost_test.sh.
"""
import os
import socket
import subprocess
import tempfile
import threading
import unittest

SOURCE = os.environ.get("NEXTSERVE_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
LAUNCH = os.path.join(SOURCE, "helm", "nextserve", "files", "launch.sh")
MULTIHOST = os.path.join(SOURCE, "deploy", "launch-multihost.sh")

# Prints its arguments one a line, so the test sees exactly what the script would run.
STAND_IN = "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n"


class Listener:
    """A TCP port that accepts connections: the other pods' sshd, as far as launch.sh can tell."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))  # 127.0.0.1 and 127.0.0.2 both answer
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
                conn.close()
            except OSError:
                return


class LaunchShTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        os.makedirs(os.path.join(d, "bin"))
        for name in ("mpirun", "nextserve-rank"):
            path = os.path.join(d, "bin", name)
            with open(path, "w") as f:
                f.write(STAND_IN)
            os.chmod(path, 0o755)
        os.makedirs(os.path.join(d, "ssh"))
        with open(os.path.join(d, "ssh", "id_ed25519.pub"), "w") as f:
            f.write("ssh-ed25519 AAAAtest nextserve\n")
        self.env = {
            "PATH": os.path.join(d, "bin") + ":/usr/bin:/bin",
            "NEXTSERVE_RANK_BIN": os.path.join(d, "bin", "nextserve-rank"),
            "NEXTSERVE_RANK_PORT": "9000",
            "NEXTSERVE_SSH_DIR": os.path.join(d, "ssh"),
            "NEXTSERVE_WORK_DIR": os.path.join(d, "work"),
            "NEXTSERVE_FORWARD_ENV": "OMP_NUM_THREADS NCCL_DEBUG UNSET_VARIABLE",
            "OMP_NUM_THREADS": "8",
            "NCCL_DEBUG": "WARN",
        }

    def tearDown(self):
        self.tmp.cleanup()

    def run_launch(self, role, env, check=True):
        result = subprocess.run(["bash", LAUNCH, role, "--", "--model", "/models", "--threads", "8"],
                                env={**self.env, **env}, capture_output=True, text=True, timeout=60)
        if check:
            self.assertEqual(result.returncode, 0, result.stderr)
        return result

    def contexts(self, argv):
        """mpirun's application contexts: [(host, rank argv)] in rank order."""
        out, current = [], None
        for i, a in enumerate(argv):
            if a == "--host" and i > 0 and argv[i - 2] == "-np":
                current = argv[i + 3:]  # after the rank binary
                end = current.index(":") if ":" in current else len(current)
                out.append((argv[i + 1], current[:end]))
        return out

    def test_one_rank_runs_without_mpirun(self):
        argv = self.run_launch("leader", {"NEXTSERVE_PODS_PER_GROUP": "1", "NEXTSERVE_RANKS_PER_POD": "1"}).stdout.split("\n")
        self.assertEqual(argv[:-1], ["--model", "/models", "--threads", "8", "--host", "0.0.0.0", "--port", "9000"])

    def test_one_pod_of_eight_ranks(self):
        argv = self.run_launch("leader", {"NEXTSERVE_PODS_PER_GROUP": "1", "NEXTSERVE_RANKS_PER_POD": "8"}).stdout.split("\n")
        self.assertNotIn("plm_rsh_agent", argv, "no ssh inside one pod")
        contexts = self.contexts(argv)
        self.assertEqual(len(contexts), 8)
        for r, (host, rank_argv) in enumerate(contexts):
            self.assertEqual(host, "localhost:8")
            port = int(rank_argv[rank_argv.index("--port") + 1])
            self.assertEqual(port + r, 9000 + r, "rank r listens on --port + r")

    def test_pods_over_ssh(self):
        sshd = Listener()
        env = {"NEXTSERVE_PODS_PER_GROUP": "3", "NEXTSERVE_RANKS_PER_POD": "2",
               "NEXTSERVE_SSH_PORT": str(sshd.port),
               "NEXTSERVE_GROUP_HOSTS": "me.ranks.ns.svc,127.0.0.1,127.0.0.2"}
        argv = self.run_launch("leader", env).stdout.split("\n")
        contexts = self.contexts(argv)
        self.assertEqual(len(contexts), 6)
        hostname = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
        for r, (host, rank_argv) in enumerate(contexts):
            pod, local = divmod(r, 2)
            self.assertEqual(host, [hostname, "127.0.0.1", "127.0.0.2"][pod] + ":2")
            port = int(rank_argv[rank_argv.index("--port") + 1])
            self.assertEqual(port + r, 9000 + local, "each pod's ranks listen on 9000, 9001")
            self.assertEqual(rank_argv[:4], ["--model", "/models", "--threads", "8"])
        rsh_args = argv[argv.index("plm_rsh_args") + 1]
        self.assertIn(f"-p {sshd.port}", rsh_args)
        self.assertIn("StrictHostKeyChecking=yes", rsh_args)
        with open(os.path.join(self.env["NEXTSERVE_WORK_DIR"], "known_hosts")) as f:
            self.assertEqual(f.read(), "* ssh-ed25519 AAAAtest nextserve\n")
        forwarded = [argv[i + 1] for i, a in enumerate(argv) if a == "-x"]
        self.assertEqual(forwarded, ["OMP_NUM_THREADS", "NCCL_DEBUG"], "only variables that are set")

    def test_leaderworkerset_names_and_a_pod_that_never_answers(self):
        env = {"NEXTSERVE_PODS_PER_GROUP": "2", "NEXTSERVE_RANKS_PER_POD": "1", "NEXTSERVE_WAIT_S": "0",
               "LWS_LEADER_ADDRESS": "demo-nextserve-ranks-1.demo-nextserve-ranks.serving"}
        result = self.run_launch("leader", env, check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn("demo-nextserve-ranks-1-1.demo-nextserve-ranks.serving:2222 (sshd of a pod of this group) "
                      "did not answer", result.stderr)

    def test_auto_role_and_bad_role(self):
        argv = self.run_launch("auto", {"HOSTNAME": "demo-nextserve-ranks-0-0", "NEXTSERVE_PODS_PER_GROUP": "1"}).stdout
        self.assertIn("--port\n9000", argv)
        result = self.run_launch("boss", {}, check=False)
        self.assertEqual(result.returncode, 2)
        self.assertIn("unknown role 'boss'", result.stderr)


class LaunchMultihostTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        self.model = os.path.join(d, "model")
        os.makedirs(self.model)
        for name in ("config.json", "tokenizer.json"):
            open(os.path.join(self.model, name), "w").close()
        self.hostfile = os.path.join(d, "hosts")
        with open(self.hostfile, "w") as f:
            f.write("# two hosts\nnode-a slots=2\n\nnode-b slots=3 max_slots=3\n")

    def tearDown(self):
        self.tmp.cleanup()

    def run_script(self, *args):
        return subprocess.run(["bash", MULTIHOST, *args], capture_output=True, text=True, timeout=60)

    def test_dry_run_places_ranks_by_slot(self):
        result = self.run_script("--hostfile", self.hostfile, "--model", self.model, "--ranks", "4",
                                 "--port", "9100", "--iface", "ib0", "--threads", "6", "--dry-run",
                                 "--", "--kv-blocks", "512")
        self.assertEqual(result.returncode, 0, result.stderr)
        mpirun, router = result.stdout.strip().split("\n")
        self.assertIn(f"mpirun --hostfile {self.hostfile} -np 4 --map-by slot", mpirun)
        self.assertIn("--mca btl_tcp_if_include ib0 --mca oob_tcp_if_include ib0", mpirun)
        self.assertIn("-x OMP_NUM_THREADS=6", mpirun)
        self.assertIn(f"nextserve-rank --model {self.model} --host 0.0.0.0 --port 9100 --threads 6 "
                      "--kv-blocks 512", mpirun)
        self.assertIn("--ranks node-a:9100\\,node-a:9101\\,node-b:9102\\,node-b:9103", router)
        self.assertIn("--host 0.0.0.0 --port 8000", router)

    def test_all_slots_by_default(self):
        result = self.run_script("--hostfile", self.hostfile, "--model", self.model, "--dry-run")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("-np 5", result.stdout)
        self.assertIn("node-b:9004 ", result.stdout)

    def test_bad_input_names_the_problem(self):
        for args, message in [
            (["--model", self.model], "--hostfile is required"),
            (["--hostfile", "/nonexistent", "--model", self.model], "hostfile '/nonexistent' does not exist"),
            (["--hostfile", self.hostfile, "--model", self.tmp.name], "has no config.json"),
            (["--hostfile", self.hostfile, "--model", self.model, "--ranks", "6"], "the hostfile has 5 slots"),
            (["--hostfile", self.hostfile, "--model", self.model, "--ranks", "two"], "--ranks must be a number"),
            (["--hostfile", self.hostfile, "--model", self.model, "--port", "65533"], "ranks need ports"),
            (["--hostfile", self.hostfile, "--model", self.model, "--bogus"], "unknown option '--bogus'"),
        ]:
            with self.subTest(args=args):
                result = self.run_script(*args, "--dry-run")
                self.assertEqual(result.returncode, 2)
                self.assertIn(message, result.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
