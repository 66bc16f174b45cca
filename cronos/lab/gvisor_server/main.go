// Command gvisor_server: a gVisor netstack TCP/IP stack on an existing TAP
// device, the target of Cron-OS's `gvisor` lab profile (cronos/lab/gvisor.py).
//
//	gvisor_server -tap cr<id>g<k> -ip 10.77.<k>.2/24 -mac 02:00:00:77:<k>:03 -ports 80,1234
//
// The process opens the TAP (TUNSETIFF, IFF_TAP|IFF_NO_PI) and hands its fd
// to netstack's fdbased link endpoint with an Ethernet header. netstack
// answers ARP and TCP for -ip itself: the host kernel never sees those
// segments as its own, so every SYN-ACK, FIN and RST on the wire is
// netstack's. Services (the contract of cronos.lab.servers):
//
//   - port 80: read the request up to the blank line, answer a tiny
//     HTTP/1.0 response and close first (our FIN: FIN_WAIT1);
//   - any other port: read until the peer's FIN, then close (LAST_ACK).
//
// netstack runs with its defaults: no TCP option is set on the stack or on
// the endpoints, so the timers measured are gVisor's own.
//
// Built offline by cronos/lab/gvisor.py against Debian's
// golang-gvisor-gvisor-dev (GOPATH=/usr/share/gocode, GO111MODULE=off).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/link/tun"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

const response = "HTTP/1.0 200 OK\r\nServer: cronos-lab-gvisor\r\nContent-Type: text/plain\r\n" +
	"Content-Length: 12\r\nConnection: close\r\n\r\ncronos-lab\r\n"

// ReadyLine is printed on stdout once every port listens.
const ReadyLine = "CRONOS-GVISOR-READY"

const nicID tcpip.NICID = 1

func fatal(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "gvisor_server: "+format+"\n", a...)
	os.Exit(1)
}

// serveHTTP reads one request (or EOF), answers it and closes first.
func serveHTTP(c net.Conn) {
	defer c.Close()
	var data []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(data, []byte("\r\n\r\n")) && len(data) < 65536 {
		n, err := c.Read(buf)
		data = append(data, buf[:n]...)
		if err != nil {
			break
		}
	}
	if len(data) > 0 {
		io.WriteString(c, response)
	}
}

// serveSink reads until the peer's FIN, then closes.
func serveSink(c net.Conn) {
	defer c.Close()
	io.Copy(io.Discard, c)
}

func listen(s *stack.Stack, addr tcpip.Address, port int, proto tcpip.NetworkProtocolNumber) {
	l, err := gonet.ListenTCP(s, tcpip.FullAddress{NIC: nicID, Addr: addr, Port: uint16(port)},
		proto)
	if err != nil {
		fatal("listen %d: %v", port, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				fatal("accept %d: %v", port, err)
			}
			if port == 80 {
				go serveHTTP(c)
			} else {
				go serveSink(c)
			}
		}
	}()
}

func main() {
	tapName := flag.String("tap", "", "existing persistent TAP interface")
	ipArg := flag.String("ip", "", "netstack's address with prefix, e.g. 10.77.1.2/24")
	ip6Arg := flag.String("ip6", "", "its IPv6 address with prefix too (optional), e.g. fd77:0:0:1::2/64")
	macArg := flag.String("mac", "02:00:00:77:77:03", "netstack's MAC address")
	portsArg := flag.String("ports", "80,1234", "TCP ports to serve")
	flag.Parse()
	if *tapName == "" || *ipArg == "" {
		fatal("-tap and -ip are required")
	}

	ip, ipnet, err := net.ParseCIDR(*ipArg)
	if err != nil || ip.To4() == nil {
		fatal("bad -ip %q", *ipArg)
	}
	prefix, _ := ipnet.Mask.Size()
	var ip6 net.IP
	prefix6 := 0
	if *ip6Arg != "" {
		var net6 *net.IPNet
		ip6, net6, err = net.ParseCIDR(*ip6Arg)
		if err != nil || ip6.To4() != nil {
			fatal("bad -ip6 %q", *ip6Arg)
		}
		prefix6, _ = net6.Mask.Size()
	}
	mac, err := net.ParseMAC(*macArg)
	if err != nil {
		fatal("bad -mac %q: %v", *macArg, err)
	}

	fd, err := tun.OpenTAP(*tapName)
	if err != nil {
		fatal("open tap %s: %v", *tapName, err)
	}
	linkEP, err := fdbased.New(&fdbased.Options{
		FDs:            []int{fd},
		MTU:            1500,
		EthernetHeader: true,
		Address:        tcpip.LinkAddress(mac),
	})
	if err != nil {
		fatal("fdbased: %v", err)
	}

	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	if terr := s.CreateNIC(nicID, linkEP); terr != nil {
		fatal("create NIC: %v", terr)
	}
	addr := tcpip.Address(ip.To4())
	if terr := s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr, PrefixLen: prefix},
	}, stack.AddressProperties{}); terr != nil {
		fatal("add address: %v", terr)
	}
	routes := []tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: nicID}}
	var addr6 tcpip.Address
	if ip6 != nil {
		addr6 = tcpip.Address(ip6.To16())
		if terr := s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
			Protocol:          ipv6.ProtocolNumber,
			AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr6, PrefixLen: prefix6},
		}, stack.AddressProperties{}); terr != nil {
			fatal("add IPv6 address: %v", terr)
		}
		routes = append(routes, tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	s.SetRouteTable(routes)

	for _, p := range strings.Split(*portsArg, ",") {
		port, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || port < 1 || port > 65535 {
			fatal("bad port %q", p)
		}
		listen(s, addr, port, ipv4.ProtocolNumber)
		if ip6 != nil {
			listen(s, addr6, port, ipv6.ProtocolNumber)
		}
	}
	fmt.Println(ReadyLine)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
