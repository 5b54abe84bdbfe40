// The benchmark's "a little real work" action: parses and branches on a few fields of every
// status callback, the way an app that tracks its deliveries would, and logs only failures.
const status = vo.MessageStatus || vo.SmsStatus;
const to = (vo.To || "").replace(/^whatsapp:/, "");
const country = to.startsWith("+39") ? "IT" : to.startsWith("+1") ? "US" : "other";
const code = vo.ErrorCode ? parseInt(vo.ErrorCode, 10) : 0;
let outcome;
switch (status) {
  case "read":
    outcome = { stage: 3, final: true };
    break;
  case "delivered":
    outcome = { stage: 2, final: false };
    break;
  case "sent":
  case "queued":
    outcome = { stage: 1, final: false };
    break;
  case "failed":
  case "undelivered":
    outcome = { stage: -1, final: true, retry: code === 63016 || code === 63024 };
    break;
  default:
    outcome = { stage: 0, final: false };
}
if (outcome.stage < 0) {
  utils.warn(`message ${vo.MessageSid} to ${country} ${status} with ${code} (retry: ${outcome.retry})`);
}
JSON.stringify({ sid: vo.MessageSid, company: vo.companyId, country, status, ...outcome }).length;
