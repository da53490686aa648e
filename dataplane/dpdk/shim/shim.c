/* See shim.h. */
#include <string.h>

#include "shim.h"

int vipr_rte_errno(void) { return rte_errno; }

unsigned vipr_lcore_id(void) { return rte_lcore_id(); }

uint16_t vipr_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t vipr_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *vipr_pktmbuf_alloc(struct rte_mempool *pool) { return rte_pktmbuf_alloc(pool); }

int vipr_pktmbuf_alloc_bulk(struct rte_mempool *pool, struct rte_mbuf **mbufs, unsigned n) {
    return rte_pktmbuf_alloc_bulk(pool, mbufs, n);
}

void vipr_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void vipr_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned n) { rte_pktmbuf_free_bulk(mbufs, n); }

uint8_t *vipr_pktmbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }

uint16_t vipr_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }

uint16_t vipr_pktmbuf_capacity(const struct rte_mbuf *m) {
    return (uint16_t)(m->buf_len - m->data_off);
}

int vipr_pktmbuf_set_len(struct rte_mbuf *m, uint16_t len) {
    if (m->nb_segs != 1 || len > m->buf_len - m->data_off)
        return -1;
    m->data_len = len;
    m->pkt_len = len;
    return 0;
}

uint16_t vipr_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

int vipr_pktmbuf_read(const struct rte_mbuf *m, uint8_t *dst, uint32_t cap) {
    uint32_t len = rte_pktmbuf_pkt_len(m);
    if (len > cap)
        return -1;
    const void *p = rte_pktmbuf_read(m, 0, len, dst);
    if (p == NULL)
        return -1;
    if (p != dst)
        memcpy(dst, p, len);
    return (int)len;
}

unsigned vipr_ring_enqueue_burst(struct rte_ring *r, struct rte_mbuf **mbufs, unsigned n) {
    return rte_ring_enqueue_burst(r, (void *const *)mbufs, n, NULL);
}

unsigned vipr_ring_dequeue_burst(struct rte_ring *r, struct rte_mbuf **mbufs, unsigned n) {
    return rte_ring_dequeue_burst(r, (void **)mbufs, n, NULL);
}

unsigned vipr_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }
