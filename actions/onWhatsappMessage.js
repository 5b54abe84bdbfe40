// Runs for every message a contact sends to the number of an app whose WHATSAPP inbound is
// "onWhatsappMessage". `vo` holds every posted field as a string (From, To, Body, ProfileName,
// WaId, MessageSid, ...), plus appId, companyId and media: an array of { url, contentType }.
// A reply within 24 hours of the contact's message may be free-form text, as here.
const text = (vo.Body || "").trim().toLowerCase();
const name = vo.ProfileName || "there";
utils.info(`message ${vo.MessageSid} from ${vo.From}: ${JSON.stringify(vo.Body || "")} with ${vo.media.length} attachment(s)`);

let reply;
if (text === "hi" || text === "hello") {
  reply = `Hi ${name}! Thanks for writing to us. How can we help?`;
} else {
  reply = "Sorry, I only understand \"hi\" for now. Write \"hi\" to start, and someone will get back to you.";
}
const sent = JSON.parse(utils.sendWhatsappMessage(vo.From, reply));
if (sent.sid) {
  utils.info(`replied to ${vo.From} with ${sent.sid}`);
} else {
  utils.log(`the reply to ${vo.From} failed: ${sent.error_code} ${sent.error_message}`, "ERROR");
}
