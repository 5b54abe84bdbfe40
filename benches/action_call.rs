//! Criterion bench: the cost of one warm action call, the way the dispatcher makes it. Each
//! iteration hands one status event (a 13-field `vo`: Twilio's 11 WhatsApp status fields plus
//! `appId` and `companyId`) to a JS worker process with `Engine::run` and waits for the answer.
//! The `empty` action does nothing: its time is the cost of the process boundary itself (the
//! round trip over the worker's socket, encoding and decoding `vo`, and the call).
//!
//! Run alone with `cargo bench --bench action_call`; `benches/run.sh` runs it and puts the
//! figure in its table. Logs go through the real formatter into a sink, so the cost of the
//! example action's `utils.info` line is counted but nothing is printed.

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use whatsapp_host::js::Program;
use whatsapp_host::outbound::Caller;
use whatsapp_host::services::Services;
use whatsapp_host::settings::Settings;
use whatsapp_host::twilio::simulate::status_callback_fields;

/// The actions measured: none at all, the example a fresh clone runs, and one that does a
/// little work.
const ACTIONS: [(&str, &str); 3] = [
    ("empty", ""),
    ("example", include_str!("../actions/onWhatsappStatus.js")),
    ("work", include_str!("actions/statusWork.js")),
];

fn settings(dir: &Path) -> Arc<Settings> {
    let toml = r#"
[server]
data_dir = "data"
actions_dir = "actions"

[twilio]
api_base = "simulate"

[actions]
workers = 1

[apps.bench.WHATSAPP]
account_id = "AC00000000000000000000000000000000"
auth_key = "bench-auth-key"
from_number = "+14155238886"
callback = "example"
"#;
    let path = dir.join("whatsapp-host.toml");
    std::fs::write(&path, toml).expect("write bench settings");
    Arc::new(Settings::load(&path, &[]).expect("bench settings load"))
}

/// The `vo` the dispatcher builds for a `delivered` callback: 11 posted fields + app + company.
fn vo() -> Vec<(String, String)> {
    let mut vo = status_callback_fields(
        "SM0123456789abcdef0123456789abcdef",
        "AC00000000000000000000000000000000",
        "+14155238886",
        "+393331234567",
        "delivered",
    );
    vo.push(("appId".into(), "bench".into()));
    vo.push(("companyId".into(), "ACME".into()));
    assert_eq!(vo.len(), 13);
    vo
}

fn action_call(c: &mut Criterion) {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_env_filter("info")
        .try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let actions = dir.path().join("actions");
    std::fs::create_dir_all(&actions).expect("actions dir");
    for (id, source) in ACTIONS {
        std::fs::write(actions.join(format!("{id}.js")), source).expect("write action");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let services = runtime
        .block_on(Services::start(settings(dir.path())))
        .expect("services start");
    let caller = Caller {
        app: services.settings.apps["bench"].clone(),
        company: "ACME".into(),
    };
    let vo = vo();
    let mut group = c.benchmark_group("action_call");
    for (id, _) in ACTIONS {
        let program = Program::Action {
            id: id.into(),
            vo: vo.clone(),
            media: None,
        };
        // Warm the worker: the first call pays for lazily built engine state.
        runtime
            .block_on(services.engine.run(caller.clone(), program.clone()))
            .expect("warm-up run");
        group.bench_function(id, |b| {
            b.iter(|| {
                runtime
                    .block_on(services.engine.run(caller.clone(), program.clone()))
                    .expect("action runs")
            })
        });
    }
    group.finish();
    runtime.block_on(services.store.close());
}

criterion_group!(benches, action_call);
criterion_main!(benches);
