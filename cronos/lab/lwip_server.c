/*
 * lwip_server.c: the Cron-OS lab's lwIP target (cronos/lab/lwip.py builds it).
 *
 * Debian's liblwip (lwIP 2.1.3, NO_SYS=0, its own lwipopts.h, unix port with
 * tapif) answers for one IPv4 address on a persistent TAP device:
 *
 *     PRECONFIGURED_TAPIF=<tap> lwip_server <ip> <netmask> [<mac>]
 *
 * tapif_init() attaches to the TAP named by PRECONFIGURED_TAPIF (TUNSETIFF,
 * IFF_TAP|IFF_NO_PI) and, because that variable is set, configures nothing
 * on the host side. Services, with the raw (callback) API in the tcpip
 * thread:
 *
 *   80    reads the request up to its blank line, answers
 *         "HTTP/1.0 200 OK ..." and closes first (FIN_WAIT_1);
 *         a peer that closes before asking gets our FIN in reply (LAST_ACK)
 *   1234  reads until the peer's FIN, then closes (LAST_ACK)
 *
 * No lwIP option or timer is changed: the point is the stack as packaged.
 * Received data is always tcp_recved() before tcp_close(), so lwIP closes
 * with a FIN, never with its "unread data" RST.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include "lwip/init.h"
#include "lwip/tcpip.h"
#include "lwip/tcp.h"
#include "lwip/netif.h"
#include "lwip/ip4_addr.h"
#include "netif/tapif.h"

#define REQ_MAX 4096

static const char RESPONSE[] =
    "HTTP/1.0 200 OK\r\n"
    "Server: lwIP/" LWIP_VERSION_STRING " (cron-os lab)\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 22\r\n"
    "Connection: close\r\n"
    "\r\n"
    "hello from lwIP 2.1.x\n";

struct conn {
  u16_t port;
  u8_t answered;
  size_t len;
  char req[REQ_MAX];
};

static void conn_free(struct tcp_pcb *pcb, struct conn *c) {
  if (pcb != NULL) {
    tcp_arg(pcb, NULL);
    tcp_recv(pcb, NULL);
    tcp_err(pcb, NULL);
  }
  free(c);
}

/* Close with a FIN (tcp_close); abort only if lwIP cannot even queue it. */
static err_t conn_close(struct tcp_pcb *pcb, struct conn *c) {
  conn_free(pcb, c);
  if (tcp_close(pcb) != ERR_OK) {
    tcp_abort(pcb);
    return ERR_ABRT;
  }
  return ERR_OK;
}

static void on_err(void *arg, err_t err) {
  (void)err;
  free(arg); /* the pcb is already gone */
}

static int request_complete(const struct conn *c) {
  size_t i;
  for (i = 0; i + 1 < c->len; i++) {
    if (c->req[i] == '\n' && c->req[i + 1] == '\n') return 1;
    if (i + 3 < c->len && memcmp(c->req + i, "\r\n\r\n", 4) == 0) return 1;
  }
  return c->len >= REQ_MAX;
}

static err_t on_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err) {
  struct conn *c = (struct conn *)arg;
  if (p == NULL) { /* the peer's FIN: close our side */
    return conn_close(pcb, c);
  }
  if (err != ERR_OK || c == NULL) {
    tcp_recved(pcb, p->tot_len);
    pbuf_free(p);
    return ERR_OK;
  }
  tcp_recved(pcb, p->tot_len);
  if (c->port == 80 && !c->answered) {
    size_t room = REQ_MAX - c->len;
    size_t n = p->tot_len < room ? p->tot_len : room;
    pbuf_copy_partial(p, c->req + c->len, (u16_t)n, 0);
    c->len += n;
    pbuf_free(p);
    if (request_complete(c)) {
      c->answered = 1;
      /* the FIN rides on the response segment (tcp_send_fin appends it) */
      tcp_write(pcb, RESPONSE, sizeof(RESPONSE) - 1, TCP_WRITE_FLAG_COPY);
      return conn_close(pcb, c);
    }
    return ERR_OK;
  }
  pbuf_free(p); /* port 1234 (or data after the request): discard */
  return ERR_OK;
}

static err_t on_accept(void *arg, struct tcp_pcb *pcb, err_t err) {
  struct conn *c;
  (void)arg;
  if (err != ERR_OK || pcb == NULL) return ERR_VAL;
  c = (struct conn *)calloc(1, sizeof(*c));
  if (c == NULL) {
    tcp_abort(pcb);
    return ERR_ABRT;
  }
  c->port = pcb->local_port;
  tcp_arg(pcb, c);
  tcp_recv(pcb, on_recv);
  tcp_err(pcb, on_err);
  return ERR_OK;
}

static int listen_on(u16_t port, int dual) {
  /* dual: one pcb for IPv4 and IPv6 (lwIP's IPADDR_TYPE_ANY) */
  struct tcp_pcb *pcb = tcp_new_ip_type(dual ? IPADDR_TYPE_ANY : IPADDR_TYPE_V4);
  if (pcb == NULL || tcp_bind(pcb, dual ? IP_ANY_TYPE : IP4_ADDR_ANY, port) != ERR_OK)
    return -1;
  pcb = tcp_listen(pcb);
  if (pcb == NULL) return -1;
  tcp_accept(pcb, on_accept);
  return 0;
}

static int parse_mac(const char *s, u8_t mac[6]) {
  unsigned int b[6];
  int i;
  if (sscanf(s, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
    return -1;
  for (i = 0; i < 6; i++) mac[i] = (u8_t)b[i];
  return 0;
}

int main(int argc, char **argv) {
  static struct netif netif;
  ip4_addr_t ip, mask, gw;
  u8_t mac[6];
  int have_mac = 0;

  ip6_addr_t ip6;
  int have_ip6 = 0;

  if (argc < 3 || getenv("PRECONFIGURED_TAPIF") == NULL) {
    fprintf(stderr, "usage: PRECONFIGURED_TAPIF=<tap> %s IP NETMASK [MAC [IPV6]]\n", argv[0]);
    return 2;
  }
  if (!ip4addr_aton(argv[1], &ip) || !ip4addr_aton(argv[2], &mask)) {
    fprintf(stderr, "%s: bad address or netmask\n", argv[0]);
    return 2;
  }
  if (argc > 3) {
    if (parse_mac(argv[3], mac) != 0) {
      fprintf(stderr, "%s: bad MAC %s\n", argv[0], argv[3]);
      return 2;
    }
    have_mac = 1;
  }
  if (argc > 4) {
    if (!ip6addr_aton(argv[4], &ip6)) {
      fprintf(stderr, "%s: bad IPv6 address %s\n", argv[0], argv[4]);
      return 2;
    }
    have_ip6 = 1;
  }
  ip4_addr_set_zero(&gw);
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);

  tcpip_init(NULL, NULL);
  LOCK_TCPIP_CORE();
  if (netif_add(&netif, &ip, &mask, &gw, NULL, tapif_init, tcpip_input) == NULL) {
    UNLOCK_TCPIP_CORE();
    fprintf(stderr, "%s: netif_add (tapif_init) failed\n", argv[0]);
    return 1;
  }
  if (have_mac) memcpy(netif.hwaddr, mac, 6);
  if (have_ip6) {
    s8_t idx;
    netif_create_ip6_linklocal_address(&netif, 1);
    if (netif_add_ip6_address(&netif, &ip6, &idx) != ERR_OK) {
      UNLOCK_TCPIP_CORE();
      fprintf(stderr, "%s: cannot add %s\n", argv[0], argv[4]);
      return 1;
    }
    netif_ip6_addr_set_state(&netif, idx, IP6_ADDR_PREFERRED);  /* no DAD: usable at once */
  }
  netif_set_default(&netif);
  netif_set_up(&netif);
  if (listen_on(80, have_ip6) != 0 || listen_on(1234, have_ip6) != 0) {
    UNLOCK_TCPIP_CORE();
    fprintf(stderr, "%s: cannot listen\n", argv[0]);
    return 1;
  }
  UNLOCK_TCPIP_CORE();
  printf("lwIP %s on %s: %s ports 80,1234\n", LWIP_VERSION_STRING,
         getenv("PRECONFIGURED_TAPIF"), argv[1]);
  for (;;) pause();
  return 0;
}
