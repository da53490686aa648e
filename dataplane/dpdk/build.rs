//! Generates the DPDK bindings from the installed headers (Debian's libdpdk-dev 22.11,
//! found through pkg-config) and compiles the C shim (shim/shim.c) that turns DPDK's
//! static inline functions into linkable ones. scripts/setup.sh installs libdpdk-dev;
//! bindgen loads the libclang that clang-22 brings.
//!
//! Only the functions and types vipr calls are bound (allowlists below), which keeps the
//! generated file small and the build quick.

use std::path::PathBuf;

/// DPDK libraries vipr calls into. The poll-mode drivers themselves (net_af_packet,
/// net_ring, net_tap, PCI NICs) are loaded by EAL from its plugin directory at init.
const LIBS: &[&str] = &[
    "rte_eal",
    "rte_mempool",
    "rte_mbuf",
    "rte_ring",
    "rte_ethdev",
    "rte_net_ring",
    "rte_bus_vdev",
];

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/shim.c");
    let dpdk = pkg_config::Config::new()
        .atleast_version("22.11")
        .cargo_metadata(false)
        .probe("libdpdk")
        .unwrap_or_else(|e| {
            panic!("vipr-dpdk needs DPDK 22.11 headers: apt-get install libdpdk-dev (scripts/setup.sh does): {e}")
        });
    for path in &dpdk.link_paths {
        println!("cargo:rustc-link-search=native={}", path.display());
    }
    for lib in LIBS {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }

    // What DPDK's pkg-config file hands C compilers: include dirs, `-include
    // rte_config.h`, and -march (DPDK's headers check the CPU features they may use).
    let mut clang_args: Vec<String> =
        dpdk.include_paths.iter().map(|p| format!("-I{}", p.display())).collect();
    clang_args.extend(["-include".to_string(), "rte_config.h".to_string()]);

    let mut build = cc::Build::new();
    build.file("shim/shim.c").includes(&dpdk.include_paths).flag("-include").flag("rte_config.h");
    // DPDK's headers need SSE4.2 on x86 (Debian builds it for corei7).
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        build.flag("-march=corei7");
        clang_args.push("-march=corei7".to_string());
    }
    build.warnings(false).compile("vipr_dpdk_shim");

    let bindings = bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_args(&clang_args)
        .allowlist_function("vipr_.*")
        .allowlist_function("rte_eal_(init|cleanup)")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_thread_(register|unregister)")
        .allowlist_function("rte_lcore_id")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_mempool_(avail_count|in_use_count|free|lookup)")
        .allowlist_function("rte_ring_(create|free)")
        .allowlist_function("rte_eth_from_rings")
        .allowlist_function("rte_dev_(probe|remove)")
        .allowlist_function("rte_vdev_(init|uninit)")
        .allowlist_function("rte_eth_dev_(configure|start|stop|close|info_get|get_port_by_name|get_name_by_port|socket_id|count_avail|is_valid_port|adjust_nb_rx_tx_desc)")
        .allowlist_function("rte_eth_(rx|tx)_queue_setup")
        .allowlist_function("rte_eth_(macaddr_get|promiscuous_enable|stats_get|stats_reset|link_get_nowait)")
        .allowlist_type("rte_eth_conf|rte_eth_dev_info|rte_eth_stats|rte_ether_addr|rte_eth_link")
        .allowlist_var("RTE_MBUF_DEFAULT_BUF_SIZE|RTE_PKTMBUF_HEADROOM|RTE_MAX_ETHPORTS|SOCKET_ID_ANY|RING_F_.*|RTE_ETH_NAME_MAX_LEN")
        .opaque_type("rte_mempool|rte_ring|rte_mbuf|rte_device")
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .expect("bindgen: generating DPDK bindings from shim/shim.h");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(&out).expect("writing bindings.rs");
}
