//! The benchmark's smoke run (`shop-bench --smoke`, every step for a moment), so that
//! `make bench` cannot rot: it must finish and report every figure it promises. Speed
//! itself is never asserted here; `make bench` prints it.

use std::process::Command;

use e2e::*;
use serde_json::Value;

fn requests(figures: &Value) -> u64 {
    figures["requests"].as_u64().unwrap_or(0)
}

#[test]
fn the_benchmark_runs_every_step_and_reports_every_figure() {
    let scratch = Scratch::new("bench-smoke");
    let out = scratch.path().join("out");
    let output = Command::new(binary("shop-bench"))
        .arg("--smoke")
        .env("BENCH_OUT", &out)
        .env_remove("BENCH_RUNNER")
        .output()
        .expect("shop-bench (cargo build --bins)");
    let printed = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    // Steal is summed up for the Redis floor and for each host's runs.
    assert!(
        printed.contains("Steal in the Redis floor (CPU the hypervisor gave"),
        "{printed}"
    );
    assert!(
        printed.contains("Steal in this host's runs (CPU the hypervisor gave"),
        "{printed}"
    );

    let results: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let redis = results["redis"].as_array().unwrap();
    let commands: Vec<&str> = redis.iter().filter_map(|r| r["command"].as_str()).collect();
    assert_eq!(commands, ["SET", "INCRBY", "PUBLISH"]);
    for r in redis {
        assert!(r["requests_per_second"].as_f64() > Some(0.0), "{r}");
        assert!(r["cpu_percent"]["steal"].as_f64() >= Some(0.0), "{r}");
        assert!(r["cpu_percent"]["redis"].as_f64() >= Some(0.0), "{r}");
    }

    let runner = &results["hosts"][0];
    assert_eq!(runner["host"], "runner");
    // Which build of the runner was measured is part of the results (the smoke run's
    // is the test build; `make bench` passes the optimised one).
    assert_eq!(
        runner["program"].as_str().map(std::path::Path::new),
        Some(runner_binary().strip_prefix(workspace_root()).unwrap()),
        "{runner}"
    );
    for step in ["empty", "products", "orders"] {
        let runs = runner[step].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{step}: one run per concurrency");
        for run in runs {
            assert!(requests(run) > 0, "{step}: {run}");
            assert!(run["p99_ms"].as_f64() >= run["p50_ms"].as_f64(), "{run}");
            // A run's CPU says what the hypervisor kept, or its figures cannot be judged.
            assert!(run["cpu_percent"]["steal"].as_f64() >= Some(0.0), "{run}");
        }
    }
    // Checkout alone accepts every order it is offered: nothing refused, nothing lost.
    for run in runner["orders"].as_array().unwrap() {
        assert_eq!(
            run["statuses"]["202"].as_u64(),
            Some(requests(run)),
            "{run}"
        );
    }
    let lines: Vec<u64> = runner["order_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[0].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 5, 10]);
    // What exporting every span costs, beside the same run exporting nothing.
    let exported = &runner["orders_exported"];
    assert!(requests(exported) > 0, "{exported}");
    assert!(
        exported["cpu_percent"]["trace-viewer"].as_f64().is_some(),
        "{exported}"
    );

    // End to end, with the mail API at once and slow: every order accepted was emailed.
    let end_to_end = runner["end_to_end"].as_array().unwrap();
    let delays: Vec<u64> = end_to_end
        .iter()
        .map(|e| e["mail_delay_ms"].as_u64().unwrap())
        .collect();
    // One fixed rate with the mail API at once, one bisection step above it, then slow.
    assert_eq!(delays, [0, 0, 150]);
    let offered: Vec<u64> = end_to_end
        .iter()
        .map(|e| e["offered_per_second"].as_u64().unwrap())
        .collect();
    let keeps_up = &runner["keeps_up"];
    let ceiling = keeps_up["checkout_alone"].as_u64().unwrap();
    let (low, high) = if end_to_end[0]["kept_up"] == true {
        (offered[0], ceiling)
    } else {
        (0, offered[0])
    };
    assert_eq!(offered[1], low + (high - low) / 2, "{keeps_up}");
    // The bounds it reports are rates it measured, the one kept up with below the other.
    let measured =
        |bound: &Value| bound.is_null() || offered[..2].contains(&bound.as_u64().unwrap());
    assert!(measured(&keeps_up["highest_kept_up"]), "{keeps_up}");
    assert!(measured(&keeps_up["lowest_fell_behind"]), "{keeps_up}");
    if let (Some(kept), Some(fell)) = (
        keeps_up["highest_kept_up"].as_u64(),
        keeps_up["lowest_fell_behind"].as_u64(),
    ) {
        assert!(kept < fell, "{keeps_up}");
    }
    for run in end_to_end {
        assert_eq!(run["drained"], true, "{run}");
        assert!(run["accepted_per_second"].as_f64() > Some(0.0), "{run}");
        assert!(
            run["order_to_email_p50_ms"]
                .as_f64()
                .is_some_and(f64::is_finite),
            "{run}"
        );
        assert_eq!(run["unexpected_answers"], 0, "{run}");
    }
    // Target 1's ratio from pairs run in turn: both apps answered, every order accepted.
    let pairs = runner["ratio_pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2);
    for pair in pairs {
        assert!(requests(&pair["empty"]) > 0, "{pair}");
        assert_eq!(pair["empty"]["connections"], 32, "{pair}");
        let orders = &pair["orders"];
        assert!(requests(orders) > 0, "{pair}");
        assert_eq!(
            orders["statuses"]["202"].as_u64(),
            Some(requests(orders)),
            "{pair}"
        );
    }
    assert!(
        printed.contains("Ratio over 2 pairs run in turn: `POST /api/orders` = "),
        "{printed}"
    );

    // Fulfilment by shards used, the mail API slow: each shard offered more than it can
    // take, every order accepted, and emails reaching the mail API from every count.
    let by_shards = runner["by_shards"].as_array().unwrap();
    let shards: Vec<u64> = by_shards.iter().map(|p| p[0].as_u64().unwrap()).collect();
    assert_eq!(shards, [1, 2]);
    for pair in by_shards {
        let (shards, run) = (pair[0].as_u64().unwrap(), &pair[1]);
        assert_eq!(run["mail_delay_ms"], 150, "{run}");
        assert_eq!(
            run["offered_per_second"].as_u64(),
            Some(60 * shards),
            "{run}"
        );
        assert_eq!(run["unexpected_answers"], 0, "{run}");
        assert_eq!(run["drained"], true, "{run}");
        assert!(
            run["emailed_per_second_during_load"].as_f64() > Some(0.0),
            "{run}"
        );
    }
    assert!(
        printed.contains("| Fulfilment by shards used (mail API in 150 ms) |"),
        "{printed}"
    );
    assert!(runner["memory"]["idle_mib"].as_f64() > Some(1.0));
    assert!(runner["startup"]["cold_ms"].as_f64() > Some(0.0));

    // Head to head at one connection (here the runner alone, as `spin` is not on PATH):
    // in each placement of the host and Redis, each request once per round, every
    // answer the expected one.
    let head_to_head = results["head_to_head"].as_array().unwrap();
    let compared: Vec<(&str, &str)> = head_to_head
        .iter()
        .map(|h| {
            (
                h["placement"].as_str().unwrap(),
                h["request"].as_str().unwrap(),
            )
        })
        .collect();
    let compared_requests = [
        "empty component `GET /`",
        "`GET /api/products`",
        "`POST /api/orders` (checkout alone)",
    ];
    // Pinned both ways where the bench may use two cores, else unpinned.
    let expected = |placements: &[&'static str]| -> Vec<(&str, &str)> {
        placements
            .iter()
            .flat_map(|p| compared_requests.iter().map(move |r| (*p, *r)))
            .collect()
    };
    assert!(
        compared == expected(&["host and Redis on one core", "host and Redis on two cores"])
            || compared == expected(&["unpinned"]),
        "{compared:?}"
    );
    for h in head_to_head {
        assert_eq!(h["host"], "runner", "{h}");
        let runs = h["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{h}");
        let run = &runs[0];
        assert_eq!(run["connections"], 1, "{h}");
        assert!(requests(run) > 0, "{h}");
        let ok = h["ok_status"].as_u64().unwrap().to_string();
        assert_eq!(run["statuses"][&ok].as_u64(), Some(requests(run)), "{h}");
    }
    assert!(
        printed.contains("### Head to head at one connection (1 rounds in turn"),
        "{printed}"
    );

    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("POST /api/orders"),
        "{svg}"
    );
    assert!(
        printed.contains("| `POST /api/orders` (checkout alone) |"),
        "{printed}"
    );
}
