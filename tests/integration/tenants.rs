//! Tenant projects: companies that send from their own Twilio project, configured as
//! `[apps.<app>.tenants.<companyId>]`. Their sends ask Twilio for their company's callback URL,
//! and the callbacks posted there are checked with the tenant's token, not the app's.

use whatsapp_host::js::Program;
use whatsapp_host::outbound::Caller;
use whatsapp_host::server::CALLBACK_REFUSED;
use whatsapp_host::store::EventState;
use whatsapp_host::twilio::{signature, simulate};

use crate::helpers::dashboard::get_page;
use crate::helpers::host::{Host, Setup};
use crate::helpers::stand_ins::{
    TENANT_FROM, TENANT_SECRET, TENANT_SID, TwilioStandIn, form, values,
};
use crate::helpers::*;

/// The tenant's company: not the company scripts run for, and with a space, so the callback URL
/// is seen to be the tenant's own and percent-encoded.
const TENANT_COMPANY: &str = "Beta Srl";
/// The company scripts and the app's own sends run for.
const COMPANY: &str = "ACME";

/// The settings entry for the tenant project [`TENANT_SID`] of the test app.
fn tenant_toml(company: &str) -> String {
    format!(
        "[apps.{APP}.tenants.\"{company}\"]\naccount_id = \"{TENANT_SID}\"\nauth_key = \"{TENANT_SECRET}\"\n"
    )
}

/// The fields Twilio posts for a message the tenant's project sent.
fn tenant_fields(sid: &str, status: &str) -> Vec<(String, String)> {
    simulate::status_callback_fields(sid, TENANT_SID, TENANT_FROM, "+393331234567", status)
}

/// A server whose app has a tenant project for [`TENANT_COMPANY`].
fn tenant_config() -> TestConfig {
    let mut config = TestConfig::on_status("utils.info('status ' + vo.MessageStatus);");
    config.extra = tenant_toml(TENANT_COMPANY);
    config
}

#[tokio::test]
async fn a_tenant_projects_callback_is_checked_with_the_tenants_token_not_the_apps() {
    let app = spawn_app(&tenant_config()).await;
    let url = app.callback_url(APP, TENANT_COMPANY);
    let fields = tenant_fields("SM00000000000000000000000000000101", "delivered");

    let with_app_key = signature::sign(AUTH_KEY, &url, &fields);
    let response = app
        .post_form(&url, &fields, Some(&with_app_key), None)
        .await;
    assert_eq!(response.status(), 403, "signed with the app's token");
    assert_eq!(response.text().await.unwrap(), CALLBACK_REFUSED);
    // The tenant's callbacks belong to its own company's URL only.
    let other = app.callback_url(APP, COMPANY);
    let elsewhere = signature::sign(TENANT_SECRET, &other, &fields);
    let response = app.post_form(&other, &fields, Some(&elsewhere), None).await;
    assert_eq!(
        response.status(),
        403,
        "the tenant's at another company's URL"
    );
    assert!(app.all_events().await.is_empty(), "nothing stored");

    let with_tenant_key = signature::sign(TENANT_SECRET, &url, &fields);
    let response = app
        .post_form(&url, &fields, Some(&with_tenant_key), None)
        .await;
    assert_eq!(response.status(), 200, "signed with the tenant's token");
    // The app's own sends for that company still call back signed with the app's token.
    let own = "SM00000000000000000000000000000102";
    assert_eq!(
        app.post_status(TENANT_COMPANY, own, "sent").await.status(),
        200
    );
    app.wait_for_events(2, EventState::Done).await;
    for event in app.all_events().await {
        assert_eq!(event.company, TENANT_COMPANY);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_tenants_send_asks_twilio_for_its_companys_callback_url() {
    let twilio = TwilioStandIn::start().await;
    let setup = Setup {
        extra: tenant_toml(TENANT_COMPANY),
        ..Setup::default()
    };
    let host = Host::start(&twilio.uri(), setup).await;
    let send = |account: &str| {
        format!(
            "utils.sendWhatsappMessage('{account}', '{TENANT_SECRET}', '{TENANT_FROM}', '+39 333 123 4567', 'hi')"
        )
    };
    // The script runs for COMPANY; the callback URL is the tenant's company's.
    let outcome = host.send(&send(TENANT_SID)).await;
    assert!(outcome["sid"].is_string(), "{outcome}");
    // A project no tenant entry names gets no callback URL, as before.
    let unknown = "AC11111111111111111111111111111111";
    let outcome = host.send(&send(unknown)).await;
    assert!(outcome["sid"].is_string(), "{outcome}");

    let requests = twilio.requests().await;
    assert_eq!(requests.len(), 2);
    assert_eq!(
        values(&form(&requests[0]), "StatusCallback"),
        ["http://127.0.0.1:0/whatsapp/callback/crm/Beta%20Srl"]
    );
    assert!(values(&form(&requests[1]), "StatusCallback").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_send_in_simulate_mode_comes_back_as_its_companys_callbacks() {
    let app = spawn_app(&tenant_config().api_base("simulate")).await;
    let caller = Caller {
        app: app.services.settings.apps[APP].clone(),
        company: COMPANY.to_string(),
    };
    let source = format!(
        "JSON.parse(utils.sendWhatsappMessage('{TENANT_SID}', '{TENANT_SECRET}', '{TENANT_FROM}', '3331234567', 'hi')).sid"
    );
    let program = Program::Script {
        name: "tenant.js".into(),
        source,
    };
    let sid = app.services.engine.run(caller, program).await.unwrap();
    let sid = sid
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("a sid");
    // Sent, delivered and read, each signed by the simulated tenant project and accepted.
    app.services.outbound.settle().await;
    app.wait_for_events(3, EventState::Done).await;
    for event in app.all_events().await {
        assert_eq!(event.company, TENANT_COMPANY);
        assert_eq!(event.message_sid.as_deref(), Some(sid.as_str()));
    }
    app.stop().await;
}

#[tokio::test]
async fn no_dashboard_page_shows_a_tenants_auth_key() {
    let app = spawn_app(&tenant_config().with_dashboard()).await;
    let url = app.callback_url(APP, TENANT_COMPANY);
    let mut fields = tenant_fields("SM00000000000000000000000000000103", "delivered");
    fields.push(("Body".into(), format!("pasted by mistake: {TENANT_SECRET}")));
    let sig = signature::sign(TENANT_SECRET, &url, &fields);
    let response = app.post_form(&url, &fields, Some(&sig), None).await;
    assert_eq!(response.status(), 200);
    app.store().flush().await.unwrap();
    let event = app.all_events().await.remove(0);
    let session = app.login().await;
    let page = format!("{}/events/{}", app.dashboard_url(), event.id);
    let (status, body) = get_page(&page, Some(&session)).await;
    assert_eq!(status, 200);
    assert!(body.contains("pasted by mistake"), "the field is shown");
    assert!(!body.contains(TENANT_SECRET), "the tenant's key is not");
    app.stop().await;
}

#[test]
fn check_lists_each_tenant_with_its_callback_url_and_never_its_key() {
    let mut config = TestConfig::on_status("utils.info('x');").api_base("simulate");
    config.extra = tenant_toml(TENANT_COMPANY);
    config.write("127.0.0.1:9".parse().unwrap());
    let out = config.run(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "tenant {TENANT_COMPANY}  account {TENANT_SID}  callbacks http://127.0.0.1:9/whatsapp/callback/crm/Beta%20Srl"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(TENANT_SECRET));
}
