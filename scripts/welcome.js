// Sends a welcome message with the current app's WHATSAPP parameters, in the app forms:
//   whatsapp-host run scripts/welcome.js --app demo
const to = "+39 333 123 4567";

// (to, message): text only.
const text = JSON.parse(utils.sendWhatsappMessage(to, "Welcome to ACME! Reply to this chat any time."));
utils.info(`text message ${text.sid} is ${text.status}`);

// (to, message, publicMediaURL): media may be null or left out.
const noMedia = JSON.parse(utils.sendWhatsappMessage(to, "No attachment this time.", null));
utils.info(`second message ${noMedia.sid} is ${noMedia.status}`);

// (to, message, bucketName, fileName) signs a temporary Cloud Storage URL; it needs [gcs] and
// the bucket in the app's gcs_buckets.
// utils.sendWhatsappMessage(to, "Your invoice", "acme-invoices", "2026/11/invoice-42.pdf");

// Failures of the send itself are outcomes, not exceptions.
const bad = JSON.parse(utils.sendWhatsappMessage("12", "this number is invalid"));
utils.warn(`invalid number gave error ${bad.error_code}: ${bad.error_message}`);

// The script's last value is printed by `whatsapp-host run`.
({ sent: [text.sid, noMedia.sid], from: utils.getParameter("from_number") });
