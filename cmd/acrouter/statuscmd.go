package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"
)

// runStatusCommand prints the status API of a running acrouter as tables.
func runStatusCommand(ctx context.Context, w io.Writer, addr, token string) error {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string, v any) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("cannot reach acrouter's status API at %s (is acrouter running with --status %s?): %w", addr, addr, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			return fmt.Errorf("status API %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
		}
		return json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v)
	}
	var st statusDoc
	var leases []leaseDoc
	var flows []flowDoc
	if err := get("/status", &st); err != nil {
		return err
	}
	if err := get("/leases", &leases); err != nil {
		return err
	}
	if err := get("/sessions", &flows); err != nil {
		return err
	}
	printStatus(w, st, leases, flows)
	return nil
}

func printStatus(w io.Writer, st statusDoc, leases []leaseDoc, flows []flowDoc) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "acrouter\t%s\n", st.Version)
	fmt.Fprintf(tw, "uptime\t%s\n", time.Duration(st.UptimeSec*float64(time.Second)).Round(time.Second))
	fmt.Fprintf(tw, "hub\t%s hub %s user %s\n", st.Hub.Server, st.Hub.Hub, st.Hub.User)
	fmt.Fprintf(tw, "link\t%s\n", st.Hub.State)
	fmt.Fprintf(tw, "session\t%s (bridge/routing mode: %v)\n", st.Hub.SessionName, st.Hub.BridgeMode)
	fmt.Fprintf(tw, "reconnects\t%d (resumed %d)\n", st.Hub.Reconnects, st.Hub.Resumes)
	if st.Hub.LastError != "" {
		fmt.Fprintf(tw, "last error\t%s\n", st.Hub.LastError)
	}
	fmt.Fprintf(tw, "router\t%s  %s\n", st.Router.IP, st.Router.MAC)
	if st.Router.IPv6 != "" {
		dr := ""
		if st.Router.DefaultRt6 {
			dr = ", default router"
		}
		fmt.Fprintf(tw, "ipv6\t%s  %s  (DHCPv6 %s%s)\n", st.Router.IPv6, st.Router.LinkLocal6, st.Router.DHCPv6, dr)
	}
	fmt.Fprintf(tw, "flows\t%d open (max %d)\n", st.Router.FlowsOpen, st.Router.MaxSessions)
	tw.Flush()

	fmt.Fprintf(w, "\nDHCP leases (%d)\n", len(leases))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IP\tMAC/DUID\tHOSTNAME\tEXPIRES")
	for _, l := range leases {
		id := l.MAC
		if id == "" && l.DUID != "" {
			id = "DUID " + l.DUID // a DHCPv6 binding
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.IP, id, l.Hostname, l.Expires.Local().Format(time.DateTime))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nNAT sessions (%d)\n", len(flows))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tCLIENT\tDESTINATION\tSTATE\tUP\tDOWN\tAGE\tIDLE")
	for _, f := range flows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%.0fs\t%.0fs\n", f.Proto, f.Client, f.Dest, f.State, f.BytesUp, f.BytesDown, f.AgeSec, f.IdleSec)
	}
	tw.Flush()
}
