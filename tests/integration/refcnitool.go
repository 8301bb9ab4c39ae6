// refcnitool: the reference cnitool's command line on Debian's libcni (golang-github-appc-cni-dev).
// Written for cni-py's tests: what libcni does (conflist loading, the chain, prevResult, the
// result cache) is libcni's own code; this file only maps the command line to its calls.
package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) != 4 {
		die(fmt.Errorf("usage: refcnitool add|check|del NETWORK NETNS"))
	}
	netdir := os.Getenv("NETCONFPATH")
	if netdir == "" {
		netdir = "/etc/cni/net.d"
	}
	list, err := libcni.LoadConfList(netdir, os.Args[2])
	if err != nil {
		die(err)
	}
	var caps map[string]interface{}
	if s := os.Getenv("CAP_ARGS"); s != "" {
		if err := json.Unmarshal([]byte(s), &caps); err != nil {
			die(err)
		}
	}
	var args [][2]string
	if s := os.Getenv("CNI_ARGS"); s != "" {
		for _, pair := range strings.Split(s, ";") {
			kv := strings.Split(pair, "=")
			if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
				die(fmt.Errorf("invalid CNI_ARGS pair %q", pair))
			}
			args = append(args, [2]string{kv[0], kv[1]})
		}
	}
	ifname := os.Getenv("CNI_IFNAME")
	if ifname == "" {
		ifname = "eth0"
	}
	netns, err := filepath.Abs(os.Args[3])
	if err != nil {
		die(err)
	}
	sum := sha512.Sum512([]byte(netns))
	rt := &libcni.RuntimeConf{
		ContainerID:    fmt.Sprintf("cnitool-%x", sum[:10]),
		NetNS:          netns,
		IfName:         ifname,
		Args:           args,
		CapabilityArgs: caps,
	}
	cni := libcni.NewCNIConfig(filepath.SplitList(os.Getenv("CNI_PATH")), nil)
	ctx := context.TODO()
	switch os.Args[1] {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			die(err)
		}
		if err := res.Print(); err != nil {
			die(err)
		}
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		die(err)
	}
}

func die(err error) {
	fmt.Fprintln(os.Stderr, "refcnitool:", err)
	os.Exit(1)
}
