// The serving subcommands of `nextserve` (cli/up.cc, cli/generate.cc). Each takes the arguments
// after the command name (argv[0] is the command) and returns the process exit code.
#pragma once

namespace nextserve::cli {

int Up(int argc, char** argv);        // start a router and N ranks on this machine
int Generate(int argc, char** argv);  // stream one completion from a router
int Chat(int argc, char** argv);      // an interactive chat with a router

}  // namespace nextserve::cli
