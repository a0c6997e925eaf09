// Command acrouter is an unprivileged user-mode router for SoftEther VPN
// hubs: it joins a virtual hub as a bridge/routing-mode session, appears there
// as one virtual host (gVisor TCP/IP stack, DHCP server, DNS redirector) and
// maps the hub clients' flows onto ordinary host sockets.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usageHead = `acrouter — an unprivileged user-mode router for SoftEther VPN hubs.

Usage:
  acrouter [run] [flags]     join the hub and route (default)
  acrouter check [flags]     validate the configuration, try the hub login, print a verdict
  acrouter status [--status ADDR] [--status-token-file FILE]
                             print a running acrouter's status as tables
  acrouter version

The hub password comes from --password-file (not world-readable) or the
ACROUTER_PASSWORD environment variable, never from the command line.
Every flag can also be set in the TOML file given with --config (key in
brackets); flags override the file.

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(argv []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(argv) > 0 && !strings.HasPrefix(argv[0], "-") {
		cmd, argv = argv[0], argv[1:]
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, "acrouter", version)
		return 0
	case "run", "check", "status":
	case "help":
		argv = []string{"--help"}
		cmd = "run"
	default:
		fmt.Fprintf(stderr, "acrouter: unknown command %q (want run, check, status or version; see acrouter --help)\n", cmd)
		return 2
	}

	fs := flag.NewFlagSet("acrouter", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are printed below, with a hint
	cfg, err := parseArgs(fs, argv)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, fs, registerFlags(flag.NewFlagSet("", flag.ContinueOnError), new(config)))
			return 0
		}
		fmt.Fprintf(stderr, "acrouter: %v\nRun 'acrouter --help' for the flags.\n", err)
		return 2
	}

	if cmd == "status" {
		token := ""
		if cfg.Status.TokenFile != "" {
			if token, err = readSecretFile("status.token_file (--status-token-file)", cfg.Status.TokenFile); err != nil {
				fmt.Fprintln(stderr, "acrouter:", err)
				return 2
			}
		}
		ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer cancel()
		if err := runStatusCommand(ctx, stdout, cfg.Status.Listen, token); err != nil {
			fmt.Fprintln(stderr, "acrouter:", err)
			return 1
		}
		return 0
	}

	set, err := cfg.validate(true)
	if err != nil {
		fmt.Fprintln(stderr, "acrouter: invalid configuration:")
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(stderr, "  "+line)
		}
		return 2
	}
	level := new(slog.LevelVar)
	level.Set(slog.Level(set.LogLevel))
	log := newLogger(stderr, cfg.Log.Format, level)

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	if cmd == "check" {
		return runCheck(ctx, cfg, set, stdout, log)
	}
	if err := runRouter(ctx, argv, cfg, set, level, log); err != nil {
		log.Error("acrouter stopped", "err", err)
		return 1
	}
	return 0
}

func newLogger(w io.Writer, format string, level *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func printUsage(w io.Writer, fs *flag.FlagSet, docs []flagDoc) {
	keys := map[string]string{}
	for _, d := range docs {
		keys[d.flag] = d.key
	}
	fmt.Fprint(w, usageHead)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	for _, n := range names {
		f := fs.Lookup(n)
		arg, usage := flag.UnquoteUsage(f)
		line := "  --" + n
		if arg != "" {
			line += " " + arg
		}
		fmt.Fprintln(w, line)
		extra := ""
		if k := keys[n]; k != "" {
			extra = " [" + k + "]"
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
			extra += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "        %s%s\n", usage, extra)
	}
}

// reloadSignals returns a channel of SIGHUP.
func reloadSignals() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch, func() { signal.Stop(ch) }
}

var startTime = time.Now()
