// A vCenter simulator for the VDDK tests: govmomi's vcsim (Debian's golang-github-vmware-govmomi-dev)
// with what the tests need and vcsim lacks:
//   - changed block tracking: the first VM's disk gets a disk object id, a capacity and a change
//     id, and `-snapshots N` snapshots named stage-1..stage-N, each recording its own change id;
//   - QueryChangedDiskAreas, which vcsim does not implement: answered from a JSON file the test
//     writes ({"<snapshot moref>|<change id>": [[start, length], ...]}), at most `-page` areas
//     per call, so that a client has to page through them as it must against a real vCenter.
//
// Built by the tests (tests/sources/vmware/servers.py) with GOPATH pointing at Debian's sources.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// cbtVM replaces the VM in the simulator's registry. It embeds the VM by value: the property
// collector digs the managed object out of a wrapper's first field, and cannot through a pointer.
type cbtVM struct {
	simulator.VirtualMachine
	areas string
	page  int
}

func changeID(n int) string {
	return fmt.Sprintf("52 3c 5f 0e 6a 71 4d 2b-9a 10 7c 42 e5 11 00 %02x/%d", n, n)
}

// withChangeID gives the VM's disks fresh device structs (a snapshot keeps the old ones) with
// change id n, the given capacity and a disk object id.
func withChangeID(vm *simulator.VirtualMachine, n int, capacity int64) {
	// a new slice: a snapshot's config shares the old one's array
	devices := append([]types.BaseVirtualDevice(nil), vm.Config.Hardware.Device...)
	defer func() { vm.Config.Hardware.Device = devices }()
	for i, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		c := *disk
		b := *(disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo))
		b.ChangeId = changeID(n)
		c.Backing = &b
		c.CapacityInBytes = capacity
		c.CapacityInKB = capacity / 1024
		c.DiskObjectId = fmt.Sprintf("%d-%d", 1, c.Key)
		devices[i] = &c
	}
}

func (vm *cbtVM) QueryChangedDiskAreas(req *types.QueryChangedDiskAreas) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	data, err := os.ReadFile(vm.areas)
	table := map[string][][2]int64{}
	if err == nil {
		err = json.Unmarshal(data, &table)
	}
	snapshot := ""
	if req.Snapshot != nil {
		snapshot = req.Snapshot.Value
	}
	all, ok := table[snapshot+"|"+req.ChangeId]
	if err != nil || !ok {
		body.Fault_ = simulator.Fault(fmt.Sprintf("no changes recorded for %s since %q", snapshot,
			req.ChangeId), &types.InvalidArgument{InvalidProperty: "changeId"})
		return body
	}
	info := types.DiskChangeInfo{StartOffset: req.StartOffset}
	for _, a := range all {
		if a[0] >= req.StartOffset && len(info.ChangedArea) < vm.page {
			info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a[0], Length: a[1]})
		}
	}
	if n := len(info.ChangedArea); n > 0 {
		last := info.ChangedArea[n-1]
		info.Length = last.Start + last.Length - req.StartOffset
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: info}
	return body
}

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address")
	user := flag.String("username", "user", "login user")
	pass := flag.String("password", "pass", "login password")
	cert := flag.String("cert", "", "TLS certificate chain (PEM); default: vcsim's own")
	key := flag.String("key", "", "TLS key (PEM)")
	snapshots := flag.Int("snapshots", 3, "snapshots stage-1..stage-N of the first VM")
	capacity := flag.Int64("capacity", 64<<20, "the first VM's disk capacity")
	areas := flag.String("areas", "areas.json", "changed areas by snapshot and change id")
	page := flag.Int("page", 3, "changed areas per QueryChangedDiskAreas answer")
	flag.Parse()

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, *pass)}
	model.Service.TLS = new(tls.Config)
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		model.Service.TLS.Certificates = []tls.Certificate{pair}
	}

	vm := simulator.Map.Any("VirtualMachine").(*simulator.VirtualMachine)
	withChangeID(vm, 1, *capacity)
	for i := 1; i <= *snapshots; i++ {
		vm.CreateSnapshotTask(&types.CreateSnapshot_Task{This: vm.Self, Name: fmt.Sprintf("stage-%d", i)})
		withChangeID(vm, i+1, *capacity)
	}
	// snapshots are taken: from here the VM answers QueryChangedDiskAreas as well
	simulator.Map.Put(&cbtVM{VirtualMachine: *vm, areas: *areas, page: *page}) //nolint:govet

	s := model.Service.NewServer()
	fmt.Printf("URL=%s\nVM=%s\n", s.URL, vm.Self.Value)
	os.Stdout.Sync()
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
	s.Close()
	model.Remove()
}
