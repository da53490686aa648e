/*
 * vipr's shim over DPDK 22.11: the header bindgen reads, and real (linkable) functions
 * for what DPDK only offers as static inline functions or macros. Nothing here holds
 * state; each function is a direct call of the DPDK function it names.
 */
#ifndef VIPR_DPDK_SHIM_H
#define VIPR_DPDK_SHIM_H

#include <stdint.h>

#include <rte_bus_vdev.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_eth_ring.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>

/* rte_errno is a per-lcore (thread-local) variable behind a macro. */
int vipr_rte_errno(void);
/* The calling thread's lcore id (LCORE_ID_ANY if it has none). */
unsigned vipr_lcore_id(void);

uint16_t vipr_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t vipr_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *vipr_pktmbuf_alloc(struct rte_mempool *pool);
int vipr_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned n);
void vipr_pktmbuf_free(struct rte_mbuf *m);
void vipr_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n);
/* Pointer to the first data byte (rte_pktmbuf_mtod). */
uint8_t *vipr_pktmbuf_data(struct rte_mbuf *m);
uint16_t vipr_pktmbuf_data_len(const struct rte_mbuf *m);
/* Room from the data start to the end of the first segment's buffer. */
uint16_t vipr_pktmbuf_capacity(const struct rte_mbuf *m);
/* Sets data_len and pkt_len of a single-segment mbuf; -1 if len exceeds its room or the
 * mbuf is chained. */
int vipr_pktmbuf_set_len(struct rte_mbuf *m, uint16_t len);
uint16_t vipr_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* Copies the packet out of a (possibly chained) mbuf; returns its length, or -1 if it
 * does not fit in cap bytes. */
int vipr_pktmbuf_read(const struct rte_mbuf *m, uint8_t *dst, uint32_t cap);

unsigned vipr_ring_enqueue_burst(struct rte_ring *r, struct rte_mbuf **mbufs, unsigned n);
unsigned vipr_ring_dequeue_burst(struct rte_ring *r, struct rte_mbuf **mbufs, unsigned n);
unsigned vipr_ring_count(const struct rte_ring *r);

#endif
