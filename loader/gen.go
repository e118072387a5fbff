package loader

//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -mcpu=v3 -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type xlb_counters -type xlb_backend -type xlb_flow_key -type xlb_flow -type xlb_drop -type xlb_service -type xlb_stats_slot -type xlb_backend_flags -type xlb_lease -type xlb_expiry -type xlb_snat -type xlb_snat_owner -type xlb_nexthop -type xlb_backend_key -type xlb_ct_state -type xlb_flow_cookie -type xlb_svc_conf -type xlb_allow_key -type xlb_maglev_chunk -type xlb_snat_cursor xlb ../bpf/xlb.c -- -I../bpf
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -mcpu=v3 -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel xlbPass ../bpf/pass.c
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -mcpu=v3 -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type bench_pkt xlbBench ../bpf/bench.c
