// The start form: only the chosen extractor's options are shown, and "Estimate" asks the server
// what the job would cost (the same computation as `extract --estimate`) without leaving the page,
// so what was typed and the chosen file stay as they are.
(function () {
  "use strict";
  const form = document.getElementById("job-start-form");
  if (!form) return;
  const chooser = form.querySelector("#id_extractor");
  const gettext = window.gettext || ((text) => text);

  function showOptions() {
    form.querySelectorAll("fieldset.extractor-options").forEach((fieldset) => {
      fieldset.hidden = fieldset.dataset.extractor !== chooser.value;
    });
  }
  chooser.addEventListener("change", showOptions);
  showOptions();

  const button = form.querySelector("#job-estimate-button");
  const target = document.getElementById("job-estimate");
  button.addEventListener("click", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    data.append("_estimate", "1");
    target.textContent = gettext("Estimating…");
    button.disabled = true;
    try {
      const response = await fetch(window.location.href, {
        method: "POST", body: data, credentials: "same-origin", headers: {"X-Requested-With": "fetch"},
      });
      target.innerHTML = await response.text();  // the server's own fragment (escaped by its template)
    } catch (error) {
      target.textContent = gettext("The estimate could not be fetched; try again.");
    } finally {
      button.disabled = false;
    }
  });
})();
